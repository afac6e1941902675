"""What a cheaper coding schedule costs in accuracy and saves in study time: the JSON lines of
benchmarks/retraining.py, coded from the study's own trained posteriors at 1.52 KB, grouped by
dataset, posterior and schedule, beside the study's files of the same seeds (the shipped schedule),
with the full study's wall time scaled to each schedule from its measured parts.

The probe behind results/experiments/coding-schedule.json (one thread per process, two at a time):

    miracle train --model lenet5-relu --dataset mnist --budget 1.52KB --preset demo --seed S \\
        --threads 1 --out runs/sched/mnist-mean-kl-seedS          (Mean-Var: add --param mean-var and
                                                                    the study's chosen --lr, --eps-beta)
    python benchmarks/retraining.py runs/sched/mnist-mean-kl-seedS/checkpoint.pt --group 20 \\
        --retrain 75 >> runs/sched/mnist.jsonl
    python benchmarks/coding_schedule.py --lines mnist runs/sched/mnist.jsonl \\
        --lines fashion-mnist runs/sched/fashion-mnist.jsonl --out results/experiments/coding-schedule.json
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from miracle.provenance import provenance

STUDY = Path(__file__).resolve().parent.parent / "results" / "study-full"
PARTS = ("lenet5-relu-mnist", "lenet5-relu-fashion-mnist", "lenet300-mnist")
SHIPPED = (20, 150)  # the demo preset's blocks per group and retraining steps


def error_pct(accuracy: float) -> float:
    return round(100 * (1 - accuracy), 2)


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": round(statistics.mean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else None}


def study_run(dataset: str, param: str, seed: int) -> Path:
    """The study's run of this posterior and seed at 1.52 KB (Mean-Var at the part's chosen rates)."""
    pattern = f"{param}_1.52KB_seed{seed}" if param == "mean-kl" else f"{param}_1.52KB_lr*_seed{seed}"
    matches = [run for run in sorted((STUDY / f"lenet5-relu-{dataset}" / "runs").glob(pattern))
               if (run / "run.json").exists()]  # a finished run, not a leftover work folder
    if len(matches) != 1:
        sys.exit(f"coding_schedule: expected one study run {pattern} for {dataset}, found {len(matches)}")
    return matches[0]


def seed_of(line: dict) -> int:
    return int(re.search(r"seed(\d+)", line["checkpoint"])[1])


def summarise(dataset: str, lines: list[dict]) -> dict:
    by_param: dict[str, dict] = {}
    for line in sorted(lines, key=seed_of):
        coding = line["coding"]
        schedule = f"{coding['blocks_per_group']} blocks per group, {coding['retrain_steps']} retraining steps"
        by_param.setdefault(line["param"], {}).setdefault(schedule, []).append(line)
    summary = {}
    for param, schedules in by_param.items():
        seeds = sorted({seed_of(line) for rows in schedules.values() for line in rows})
        runs = [study_run(dataset, param, seed) for seed in seeds]
        # Seconds compare within one probe; the study's own coding ran in another session.
        shipped = schedules.get(f"{SHIPPED[0]} blocks per group, {SHIPPED[1]} retraining steps")
        shipped_seconds = statistics.mean(
            [line["seconds"] for line in shipped] if shipped
            else [json.loads((run / "run.json").read_text())["coding_seconds"] for run in runs])
        summary[param] = {
            "study_runs": [run.relative_to(STUDY.parent.parent).as_posix() for run in runs],
            "shipped_schedule_test_error_pct": spread(
                [error_pct(json.loads((run / "run.json").read_text())["decoded_test_accuracy"]) for run in runs]),
            "shipped_schedule_coding_seconds_mean": round(shipped_seconds, 1),
            "shipped_schedule_coding_seconds_from": "this probe" if shipped else "the study's runs",
            "schedules": {schedule: {
                "seeds": [seed_of(line) for line in rows],
                "retraining_steps": rows[0]["retraining_steps"],
                "test_error_pct": spread([error_pct(line["decoded_test_accuracy"]) for line in rows]),
                "coding_seconds_relative": round(statistics.mean(line["seconds"] for line in rows) / shipped_seconds, 3),
            } for schedule, rows in schedules.items()},
        }
    return summary


def study_cost(coding_relative: dict[str, float]) -> dict:
    """The full study's wall time if every run's coding took the given share of its measured seconds."""
    runs = [json.loads(path.read_text()) for part in PARTS for path in (STUDY / part / "runs").glob("*/run.json")]
    train = sum(run["train_seconds"] for run in runs)
    coding = sum(run["coding_seconds"] for run in runs)
    wall = sum(json.loads((STUDY / part / "json" / "cost.json").read_text())["wall_seconds_from_scratch"]
               for part in PARTS)
    wall_over_process = wall / ((train + coding) / 2)
    return {"train_process_seconds": round(train, 1), "coding_process_seconds": round(coding, 1),
            "wall_seconds_measured": wall, "wall_over_half_process": round(wall_over_process, 3),
            "wall_hours": {schedule: round(wall_over_process * (train + share * coding) / 2 / 3600, 2)
                           for schedule, share in coding_relative.items()},
            "how": "each run's training and coding seconds (run.json) summed over the study's parts, coding scaled "
                   "by the schedule's share of the shipped schedule's coding seconds (Mean-KL on MNIST), halved for "
                   "two processes and multiplied by the study's measured ratio of wall to process time: an "
                   "estimate, not a measurement"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", nargs=2, action="append", metavar=("DATASET", "FILE"), required=True,
                        help="a dataset (mnist, fashion-mnist) and the JSON lines of benchmarks/retraining.py")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lines: dict[str, list[dict]] = {}
    for dataset, path in args.lines:
        lines.setdefault(dataset, []).extend(json.loads(line) for line in Path(path).read_text().splitlines() if line)
    summary = {dataset: summarise(dataset, rows) for dataset, rows in lines.items()}
    mnist_kl = summary.get("mnist", {}).get("mean-kl", {}).get("schedules", {})
    relative = {schedule: figures["coding_seconds_relative"] for schedule, figures in mnist_kl.items()}
    record = {
        "what": "Decoded test error at 1.52 KB (LeNet-5, lenet5-relu) against the coding schedule, coded from the "
                "study's own trained posteriors (the demo preset's training, which reproduced the study's runs "
                f"exactly), beside the study's files at the shipped schedule ({SHIPPED[0]} blocks per group, "
                f"{SHIPPED[1]} retraining steps). The test set only measures: no schedule was chosen on it.",
        "seeds": sorted({seed for by_param in summary.values() for figures in by_param.values()
                         for schedule in figures["schedules"].values() for seed in schedule["seeds"]}),
        **provenance(),
        "by_dataset": summary,
        "study_cost_estimate": study_cost({**relative, "no retraining": 0.0}),
        "runs": {dataset: rows for dataset, rows in lines.items()},
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
