"""A preset over several seeds: one `miracle compress` per seed, one after the other, then their
mean and standard deviation.

    python benchmarks/schedule.py --preset fast --budget 1.52KB --seeds 0 1 2 --out results/schedule

Each seed writes ``<out>/<name>-seed<S>.mrc`` and the compress command's JSON summary beside it
(its command, commit, date, seed and wall time); a seed whose JSON exists is not run again, so
the same command resumes. ``<out>/<name>-summary.json`` gathers the figures of the seeds given.
The runs are sequential: a wall time is only comparable with one heavy process on the machine.
To use two cores for two seeds, start one command per seed with ``-- --threads 1``, then run it
once more with every seed: it runs nothing again and writes the summary of all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from miracle.files import write_json
from miracle.provenance import provenance


def run_seed(args, seed: int, mrc: Path) -> dict:
    command = [sys.executable, "-m", "miracle", "compress", "--model", args.model, "--dataset", args.dataset,
               "--param", args.param, "--budget", args.budget, "--preset", args.preset, "--seed", str(seed),
               "-o", str(mrc), "--json", "--quiet", *args.extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"seed {seed} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "each": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--budget", required=True)
    parser.add_argument("--model", default="lenet5-relu")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--param", default="mean-kl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="results/schedule")
    parser.add_argument("--tag", default="", help="appended to the file names: what the extra options change")
    parser.add_argument("extra", nargs="*", help="after --: more options for `miracle compress`")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{args.model}-{args.dataset}-{args.budget}-{args.param}-{args.preset}{'-' + args.tag if args.tag else ''}"
    runs = []
    for seed in args.seeds:
        summary_path = out / f"{name}-seed{seed}.json"
        if not summary_path.exists():
            print(f"seed {seed} ...", file=sys.stderr, flush=True)
            write_json(summary_path, run_seed(args, seed, out / f"{name}-seed{seed}.mrc"))
        runs.append(json.loads(summary_path.read_text()))
    summary = {
        "preset": args.preset, "budget": args.budget, "model": args.model, "dataset": args.dataset,
        "param": args.param, "extra_options": args.extra, "seeds": args.seeds,
        "test_error": spread([r["test_error"] for r in runs]),
        "size_bytes": spread([r["size_bytes"] for r in runs]),
        "seconds": spread([r["seconds"] for r in runs]),
        "threads": [r["threads"] for r in runs],
        "runs": [f"{name}-seed{seed}.json" for seed in args.seeds],
        **provenance(),
    }
    write_json(out / f"{name}-summary.json", summary)
    error, seconds = summary["test_error"], summary["seconds"]
    print(f"{name}: test error {100 * error['mean']:.2f}% ± {100 * error['std']:.2f} "
          f"({', '.join(f'{100 * e:.2f}%' for e in error['each'])}); size {max(summary['size_bytes']['each'])} bytes "
          f"at most; wall time {seconds['mean'] / 60:.1f} ± {seconds['std'] / 60:.1f} min")


if __name__ == "__main__":
    main()
