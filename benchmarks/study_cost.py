"""What the full study would cost with fewer runs, from the runs it made (a benchmark script).

Each part's wall time from scratch (its `wall_time.json`, with `--jobs 2`) is scaled by the
share of its training and coding seconds that an option keeps: evaluation, checkpoints and a
worker idle at the end are assumed to shrink in proportion. Prints one JSON line with every
estimate and writes it to --out.

    python benchmarks/study_cost.py --study results/study-full --out results/study-full/cost_options.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from miracle import files
from miracle.provenance import provenance
from miracle.study.runner import PRESETS, part_name

MAIN_SEED = 0


def _runs(part: Path) -> list[dict]:
    runs = []
    for path in sorted(part.glob("runs/*/run.json")):
        run = json.loads(path.read_text())
        # From the folder's name, param[-form]_budget[_lr.._eps..]_seedN[_validation]: runs made
        # before run.json recorded its settings have no other record of them.
        fields = path.parent.name.split("_")
        runs.append({"budget": fields[1], "seed": int(next(f for f in fields if f.startswith("seed"))[4:]),
                     "trial": fields[-1] == "validation",
                     "seconds": run["train_seconds"] + (run.get("coding_seconds") or 0.0)})
    return runs


def _options(main_budgets: dict[str, str]) -> dict[str, Callable[[str, dict], bool]]:
    """Each option keeps a run when it returns True for (part, run)."""
    def one_seed_at_other_budgets(part, run):
        return run["trial"] or run["budget"] == main_budgets[part] or run["seed"] == MAIN_SEED

    def without_2kb(part, run):
        return run["budget"] != "2KB"

    def without_lenet300(part, run):
        return part != "lenet300-mnist"

    return {
        "as specified": lambda part, run: True,
        "without the LeNet-300 part": without_lenet300,
        "without the 2 KB budget": without_2kb,
        "one seed at the budgets other than the main one": one_seed_at_other_budgets,
        "one seed at the other budgets, without the 2 KB budget":
            lambda part, run: without_2kb(part, run) and one_seed_at_other_budgets(part, run),
        "one seed at the other budgets, without the LeNet-300 part":
            lambda part, run: without_lenet300(part, run) and one_seed_at_other_budgets(part, run),
        "the main budget only (three seeds), every part":
            lambda part, run: run["trial"] or run["budget"] == main_budgets[part],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="results/study-full", help="a folder of `miracle study --preset full`")
    parser.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = parser.parse_args()
    study = Path(args.study)
    configs = {part_name(config): config for config in PRESETS["full"]}
    parts = {name: (_runs(study / name), json.loads((study / name / "json" / "cost.json").read_text()))
             for name in configs if (study / name / "json" / "cost.json").exists()}
    if not parts:
        raise SystemExit(f"{study} holds no part of the full study with a json/cost.json; run `miracle study` first")
    options = _options({name: configs[name].budget for name in parts})
    estimates = {}
    for option, keeps in options.items():
        hours = {}
        for name, (runs, cost) in parts.items():
            kept = sum(run["seconds"] for run in runs if keeps(name, run))
            hours[name] = round(cost["wall_seconds_from_scratch"] * kept / sum(r["seconds"] for r in runs) / 3600, 2)
        estimates[option] = {"wall_hours": round(sum(hours.values()), 2), "wall_hours_by_part": hours,
                             "runs": sum(keeps(name, run) for name, (runs, _) in parts.items() for run in runs)}
    result = {"study": str(study), "estimates": estimates,
              "note": "wall hours with --jobs 2: each part's measured wall time from scratch scaled by the "
                      "training and coding seconds the option keeps", **provenance()}
    print(json.dumps(result))
    if args.out:
        files.write_json(args.out, result)


if __name__ == "__main__":
    main()
