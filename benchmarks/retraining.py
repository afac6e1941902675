"""How much retraining between coded groups buys: code one trained checkpoint (of `miracle train`)
with a given group size, number of retraining steps and retraining learning rate, and print the
test accuracy of the decoded network as one JSON line.

    python benchmarks/retraining.py runs/a/checkpoint.pt --group 10 --retrain 100 --retrain-lr 1e-2

Coding options left out are the checkpoint's own (a preset's rule, say), so a probe changes
only what it names. It does what `miracle compress --from CHECKPOINT` does, without writing a
file; results/experiments/retraining*.json and coding-schedule.json were made with it (one
thread, two runs at a time; benchmarks/coding_schedule.py summarises its lines).
"""

import argparse
import json
import time

import torch

from miracle.compress import build_trainer
from miracle.config import CODING_FIELDS, CompressConfig
from miracle.data import load
from miracle.models import create_model
from miracle.progressive import code_progressively
from miracle.provenance import provenance
from miracle.training import accuracy, evaluate_posterior, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--group", type=int, dest="blocks_per_group")
    parser.add_argument("--retrain", type=int, dest="retrain_steps")
    parser.add_argument("--retrain-lr", type=float)
    parser.add_argument("--retrain-lr-schedule")
    parser.add_argument("--rule")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = load_checkpoint(args.checkpoint)
    identity = state["identity"]
    coding_options = {name: getattr(args, name) for name in CODING_FIELDS if getattr(args, name) is not None}
    config = CompressConfig.from_dict(identity["config"]).replace(steps=state["step"], **coding_options)
    train, test = load(identity["dataset"], "train"), load(identity["dataset"], "test")
    trainer = build_trainer(create_model(identity["model"], config.seed), train, config, None,
                            model_name=identity["model"], data_name=identity["dataset"])
    trainer.resume(args.checkpoint)
    vmodel = trainer.vmodel
    before = evaluate_posterior(vmodel, test, config.seed)
    start = time.perf_counter()
    coding = config.coding()
    code_progressively(trainer, coding, progress=False)
    print(json.dumps({
        "checkpoint": args.checkpoint, "param": vmodel.config.param, "coding": coding.to_dict(),
        "before_coding": before, "decoded_test_accuracy": accuracy(vmodel, test),
        "retraining_steps": trainer.step - state["step"], "seconds": round(time.perf_counter() - start, 1),
        **provenance(),
    }))


if __name__ == "__main__":
    main()
