"""Mean-Var's learning rate beyond the study's grid (an experiment that prints and writes JSON).

In every part of ``miracle study --preset full`` Mean-Var's chosen learning rate was the largest
of its grid, so a fair tuning has to ask whether a larger one would have won. This runs Mean-Var's
tuning trials at other learning rates exactly as the study runs its own (seed 0, trained without
the validation examples, coded, the decoded file judged on them; by default every annealing
rate of the part), and sets them beside the study's trials read from the study's folder.

    python benchmarks/mean_var_grid.py --part lenet5-relu-mnist --lr 0.03 --jobs 2 \\
        --study results/study-full --out results/experiments/mean-var-grid-lenet5-relu-mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from miracle import files
from miracle.provenance import provenance
from miracle.study import get_preset, part_name
from miracle.study.runner import RunSpec, execute_run, worker_pool


def _timed_run(config, spec: RunSpec, out: Path, data_dir) -> tuple[dict, float]:
    """The run and its wall seconds, evaluation included (the study's cost beyond training and coding)."""
    start = time.perf_counter()
    run = execute_run(config, spec, out, data_dir)
    return run, time.perf_counter() - start


def _trial(run: dict, wall_seconds: float, spec: RunSpec) -> dict:
    if "diverged" in run:
        return {"lr": spec.lr, "eps_beta": spec.eps_beta, "diverged": run["diverged"],
                "decoded_validation_accuracy": None, "wall_seconds": round(wall_seconds, 1)}
    return {"lr": spec.lr, "eps_beta": spec.eps_beta, "decoded_validation_accuracy": run["decoded_test_accuracy"],
            "sample_validation_accuracy": run["final"]["test_accuracy_sample"],
            "kl_bits_per_block_max": run["kl"]["kl_bits_per_block_max"], "size_bytes": run["size_bytes"],
            "train_seconds": run["train_seconds"], "coding_seconds": run["coding_seconds"],
            "wall_seconds": round(wall_seconds, 1)}


def _study_trial(trial: dict) -> dict:
    """A trial of the study's own annealing figure, in this file's terms."""
    if "diverged" in trial:
        return {"diverged": trial["diverged"], "decoded_validation_accuracy": None}
    return {"decoded_validation_accuracy": trial["decoded_test_accuracy"],
            "sample_validation_accuracy": trial["final"]["test_accuracy_sample"],
            "kl_bits_per_block_max": trial["kl_bits_per_block_max"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = {part_name(p): p for p in get_preset("full")}
    parser.add_argument("--part", required=True, choices=sorted(parts))
    parser.add_argument("--lr", type=float, action="append", required=True, help="a learning rate to try (repeat)")
    parser.add_argument("--eps-beta", type=float, action="append",
                        help="an annealing rate to try with each learning rate (repeat; default: the part's)")
    parser.add_argument("--study", type=Path, default=Path("results/study-full"), help="the full study's folder")
    parser.add_argument("--runs", type=Path, default=Path("runs/mean-var-grid"), help="where the trials run (resumable)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    config = parts[args.part]
    study = json.loads((args.study / args.part / "json" / "annealing.json").read_text())
    specs = [RunSpec("mean-var", config.budget, 0, eps, lr, tuning=True) for lr in args.lr
             for eps in (args.eps_beta or config.eps_betas)]
    out = args.runs / args.part
    with worker_pool(args.jobs) as pool:  # one-thread runs, as the study runs them
        runs = list(pool.map(_timed_run, [config] * len(specs), specs, [out] * len(specs),
                             [args.data_dir] * len(specs)))
    new = [_trial(run, wall_seconds, spec) for (run, wall_seconds), spec in zip(runs, specs)]
    chosen = next(t for t in study["trials"]
                  if (t["lr"], t["eps_beta"]) == (study["chosen"]["lr"], study["chosen"]["eps_beta"]))
    scored = [t for t in new if t["decoded_validation_accuracy"] is not None]
    result = {
        "part": args.part, "budget": config.budget,
        "study_trials": [{"lr": t["lr"], "eps_beta": t["eps_beta"], **_study_trial(t)} for t in study["trials"]],
        "study_chosen": study["chosen"], "study_chosen_decoded_validation_accuracy": chosen["decoded_test_accuracy"],
        "new_trials": new,
        "best_new_beats_study_choice": any(t["decoded_validation_accuracy"] > chosen["decoded_test_accuracy"]
                                           for t in scored),
        "seeds": [0], "study_commit": study["git_commit"], **provenance(),
    }
    files.write_json(args.out, result)
    print(f"{args.part}: the study chose lr {study['chosen']['lr']:g}, eps_beta {study['chosen']['eps_beta']:g}: "
          f"{100 * chosen['decoded_test_accuracy']:.2f}% on validation")
    for t in new:
        outcome = (t["diverged"] if "diverged" in t else f"{100 * t['decoded_validation_accuracy']:.2f}% "
                   f"(largest block KL {t['kl_bits_per_block_max']:.1f} bits)")
        print(f"  lr {t['lr']:g}, eps_beta {t['eps_beta']:g}: {outcome}")


if __name__ == "__main__":
    main()
