"""Generate docs/results.md and the README's headline table from the result files alone.

    python docs/results.py           # rewrite both
    python docs/results.py --check   # exit 1 if either is out of date (the test suite checks this)

Every figure shown is read from a JSON file under results/, next to the command, the git commit,
the date and the seeds that file records. Nothing here is typed by hand but the choice of rows.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RESULTS_MD = ROOT / "docs" / "results.md"
README = ROOT / "README.md"

PROVENANCE_KEYS = ("command", "git_commit", "date", "machine")
STUDY = RESULTS / "study-full"  # the study on the shipped settings, one folder per part

# The README's headline rows: (what, result file).
HEADLINE = [
    ("LeNet-5, MNIST, Mean-KL, `--preset fast`", "schedule/lenet5-relu-mnist-1.52KB-mean-kl-fast-share05-summary.json"),
    ("LeNet-5, MNIST, Mean-Var, `--preset fast`", "schedule/lenet5-relu-mnist-1.52KB-mean-var-fast-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset augmented`",
     "schedule/lenet5-relu-mnist-1.52KB-mean-kl-augmented-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset augmented`",
     "schedule/lenet5-relu-mnist-3.03KB-mean-kl-augmented-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset demo`", "schedule/lenet5-relu-mnist-3.03KB-mean-kl-demo-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset demo --steps 10000 --blocks-per-group 10`",
     "schedule/lenet5-relu-mnist-3.03KB-mean-kl-demo-steps10k-bpg10-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset demo --kl-bits 15`",
     "schedule/lenet5-relu-mnist-3.03KB-mean-kl-demo-kl15-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset fast --steps 30000 --blocks-per-group 20`",
     "schedule/lenet5-relu-mnist-3.03KB-mean-kl-fast-steps30k-bpg20-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset fast --steps 30000`",
     "schedule/lenet5-relu-mnist-3.03KB-mean-kl-fast-steps30k-share05-summary.json"),
    ("LeNet-5, MNIST, Mean-KL, 40,000 steps, `--index-budget 1.5KB --mean-share 0.95`",
     "lenet5-relu-mnist-mean-kl.json"),
    ("LeNet-5, MNIST, Mean-KL, `--preset demo` (`scripts/demo`)", "demo-lenet5-relu-mnist.json"),
]


def result_files() -> list[Path]:
    """Every result file; a run's work folder (``*.work/``, never committed) is not one."""
    return [p for p in sorted(RESULTS.rglob("*.json")) if not skipped(p.relative_to(RESULTS).parts)]


def skipped(parts: tuple[str, ...]) -> bool:
    """A study's per-run folders (hundreds of intermediate files; its report covers them) and its
    wall-time log (its ``json/cost.json`` holds it), and a run's work folder (``*.work/``, never
    committed)."""
    in_study = parts[0].startswith("study") and ("runs" in parts or parts[-1] == "wall_time.json")
    return in_study or any(part.endswith(".work") for part in parts)


def seeds_of(record: dict) -> str:
    if "seeds" in record:
        return ", ".join(map(str, record["seeds"])) if isinstance(record["seeds"], list) else str(record["seeds"])
    if "seed" in record:
        return str(record["seed"])
    if isinstance(record.get("config"), dict) and "seed" in record["config"]:
        return str(record["config"]["seed"])
    if isinstance(record.get("config"), dict) and isinstance(record["config"].get("seeds"), int):  # a study
        return ", ".join(map(str, range(record["config"]["seeds"])))
    words = shlex.split(record.get("command", ""))
    if "--seed" in words:
        return words[words.index("--seed") + 1]
    if words[:1] == ["miracle"]:
        return "0 (the default)"
    return "the script's default"


def figures(record: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Every number, string or list of numbers in a record, by its dotted name."""
    found = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if key in PROVENANCE_KEYS or key == "seeds":
            continue
        if isinstance(value, dict):
            found += figures(value, f"{name}.")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            found.append((name, value))
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            found.append((name, value))
    return found


def show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def section(path: Path) -> list[str]:
    record = json.loads(path.read_text())
    lines = [f"### `results/{path.relative_to(RESULTS).as_posix()}`", ""]
    records = [("", record)]
    if "command" not in record and isinstance(record.get("runs"), (dict, list)):
        runs = record["runs"]
        items = runs.items() if isinstance(runs, dict) else enumerate(runs)
        records = [(f"run `{name}`: ", run) for name, run in items if isinstance(run, dict)]
        about = record.get("about") or record.get("what")
        if about:
            lines += [str(about), ""]
    for label, entry in records:
        lines.append(f"- {label}command: `{entry.get('command', 'not recorded')}`; commit "
                     f"`{entry.get('git_commit') or record.get('git_commit') or 'not recorded'}`; date "
                     f"{entry.get('date') or record.get('date') or 'not recorded'}; seeds: {seeds_of(entry)}")
        shown = [f"`{name}` {show(value)}" for name, value in figures(entry) if not isinstance(value, str)]
        if shown:
            lines.append("  - " + "; ".join(shown))
    return lines + [""]


def results_md() -> str:
    lines = ["# Results", "",
             "Generated by `python docs/results.py` from every JSON file under `results/` (the studies'",
             "per-run folders aside: their reports cover them). Each entry gives the command",
             "that wrote the file, its git commit (`-dirty`: uncommitted edits outside `results/` at the",
             "time), its date and its seeds, then every figure it holds. Measured on one machine: 2 cores,",
             "no GPU. Error and accuracy are fractions (0.0103 is 1.03%), sizes bytes, times seconds.",
             "A Mean-KL run whose settings do not record `mean_share` was made with a share of 0.95,",
             "the default until 2026-12-05: add `--mean-share 0.95` to its command to run it again.", ""]
    folder = None
    for path in result_files():
        here = path.parent.relative_to(RESULTS).as_posix()
        if here != folder:
            folder = here
            lines += [f"## `results/{here + '/' if here != '.' else ''}`", ""]
        lines += section(path)
    return "\n".join(lines).rstrip() + "\n"


def _spread(figure: dict, scale: float, digits: int) -> str:
    mean, std = scale * figure["mean"], scale * figure["std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(figure["each"]) > 1 else f"{mean:.{digits}f}"


def headline_row(what: str, name: str) -> str | None:
    path = RESULTS / name
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    if "test_error" in r and isinstance(r["test_error"], dict):  # a schedule over seeds
        error = _spread(r["test_error"], 100, 2) + "%"
        each = ", ".join(f"{100 * e:.2f}%" for e in r["test_error"]["each"])
        size = f"≤ {max(r['size_bytes']['each']):,}"
        threads = set(r["threads"])
        wall = _spread(r["seconds"], 1 / 60, 1) + " min" + (" (1 thread)" if threads == {1} else "")
        if len(threads) > 1:  # wall times only compare at the same thread count
            wall = "; ".join(f"{s / 60:.1f} min ({n} thread{'s' * (n > 1)})"
                             for s, n in zip(r["seconds"]["each"], r["threads"]))
        return (f"| {what} | {size} | {error} ({each}) | {wall} | {seeds_of(r)} | "
                f"[{path.name}](results/{name}) |")
    size = f"{r['size_bytes']:,}" if "size_bytes" in r else f"{r['float32_bytes']:,} (float32)"
    return (f"| {what} | {size} | {100 * r['test_error']:.2f}% | {r['seconds'] / 60:.1f} min | {seeds_of(r)} | "
            f"[{path.name}](results/{name}) |")


def headline_table() -> str:
    from miracle.published import MIRACLE_LENET5_MNIST

    rows = ["| what | file bytes | test error | wall time | seeds | result file |", "|---|---|---|---|---|---|"]
    rows += [row for row in (headline_row(what, name) for what, name in HEADLINE) if row]
    rows += [f"| {p['method']} (published, indices only, GPU) | {p['size_bytes']:,} | {100 * p['test_error']:.2f}% "
             "| | | |" for p in MIRACLE_LENET5_MNIST]
    return "\n".join(rows)


def speed_table() -> str:
    idle = json.loads((RESULTS / "benchmarks" / "training.json").read_text())
    busy = json.loads((RESULTS / "benchmarks" / "training-busy.json").read_text())
    rows = ["| ms per step | plain | Mean-KL | Mean-Var | Mean-KL / plain | Mean-KL / Mean-Var | command |",
            "|---|---|---|---|---|---|---|"]

    def row(label: str, record: dict, prefix: str, variant: str = "") -> str:
        ms = [record[f"{prefix}{kind}{variant}_ms"] for kind in ("plain", "mean_kl", "mean_var")]
        return (f"| {label} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[1] / ms[0]:.2f} | {ms[1] / ms[2]:.2f} "
                f"| `python benchmarks/{record['command']}` |")

    for label, record, prefix in (("idle, 2 threads", idle, ""), ("idle, 1 thread", busy, "idle_1_thread_"),
                                  (f"one core busy, `--threads auto` ({busy['threads']['busy']} thread)", busy,
                                   "busy_")):
        rows.append(row(label, record, prefix))
        for variant, name in (("_default_layout", "default memory layout"), ("_bfloat16", "`--precision bfloat16`")):
            if f"{prefix}plain{variant}_ms" in record:  # measured with --layouts, --bfloat16
                rows.append(row(f"{label}, {name}", record, prefix, variant))
    return "\n".join(rows)


def vgg_table() -> str:
    plain = json.loads((RESULTS / "vgg" / "vgg-bn-fashion-mnist-plain.json").read_text())
    steps = json.loads((RESULTS / "benchmarks" / "training-vgg-bn.json").read_text())
    rows = ["| file | test error | posterior mean's error before coding | whole `compress` | of it coding | peak memory |",
            "|---|---|---|---|---|---|",
            f"| none: float32, {plain['float32_bytes']:,} B | {100 * plain['test_error']:.2f}% | | "
            f"{plain['seconds']:.0f} s of training | | {plain['peak_rss_mb']:,.0f} MB |"]
    files = [json.loads(p.read_text()) for p in (RESULTS / "vgg").glob("*-mean-kl-from-trained.json")]
    for r in sorted(files, key=lambda r: r["size_bytes"]):
        rows.append(f"| {r['size_bytes']:,} B ({r['side_bytes']:,} B not indices) | {100 * r['test_error']:.2f}% | "
                    f"{100 * (1 - r['before_coding']['test_accuracy_mean']):.2f}% | {r['seconds']:,.0f} s | "
                    f"{r['coding_seconds']:,.0f} s | {r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(rows) + (f"\n\nA training step (batch 128, two threads): plain {steps['plain_ms']:.0f} ms, "
                               f"Mean-KL {steps['mean_kl_ms']:.0f} ms, Mean-Var {steps['mean_var_ms']:.0f} ms "
                               f"(`python benchmarks/{steps['command']}`).")


def coder_scaling_table() -> str:
    runs = sorted((json.loads(p.read_text()) for p in (RESULTS / "benchmarks").glob("coder-scaling-*-blocks.json")),
                  key=lambda r: r["blocks"])
    rows = ["| blocks of 44 | free variables | encode (s) | decode (s) | peak memory |", "|---|---|---|---|---|"]
    rows += [f"| {r['blocks']:,} | {r['blocks'] * r['dim']:,} | {r['fast_seconds_all_blocks']:.2f} | "
             f"{r['decode_seconds_all_blocks']:.3f} | {r['peak_rss_mb']:,.0f} MB |" for r in runs]
    return "\n".join(rows)


def study_table() -> str:
    """The study's verdicts, part by part, as its figures' JSON states them."""
    rows = ["| claim | model, dataset | verdict | the numbers |", "|---|---|---|---|"]
    for path in sorted(STUDY.glob("*/json/verdicts.json")):
        part = path.parents[1].name
        for claim in json.loads(path.read_text())["claims"]:
            rows.append(f"| {claim['claim']} | [{part}](results/study-full/{part}/report.md) | **{claim['verdict']}** "
                        f"| {claim['numbers']} |")
    return "\n".join(rows) if len(rows) > 2 else "No part of the study has finished yet."


# Blocks of the README that this script writes: <!-- name --> ... <!-- /name -->.
README_BLOCKS = {"results-table": headline_table, "speed-table": speed_table, "vgg-table": vgg_table,
                 "coder-scaling-table": coder_scaling_table, "study-table": study_table}


def readme_with_tables(readme: str) -> str:
    for name, make in README_BLOCKS.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no {start} ... {end} block")
        readme = pattern.sub(lambda _: f"{start}\n{make()}\n{end}", readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the files are up to date")
    args = parser.parse_args()
    wanted = {RESULTS_MD: results_md(), README: readme_with_tables(README.read_text())}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/results.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
