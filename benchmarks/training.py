"""What a variational training step costs against a plain one (a benchmark, not a timed test).

Times, in one process and on the same batches, three training steps of the same network:

- plain: the model's own weights, Adam, the loss of the batch (no posterior);
- Mean-KL and Mean-Var: one step of :class:`miracle.training.Trainer` at the given budget.

The three are timed in interleaved rounds (plain, Mean-KL, Mean-Var, plain, ...) so that a
change in the machine's load hits all three alike; each figure is the median over rounds of
the mean step time in a round. With ``--busy`` another process keeps one core busy for the
whole measurement. The threading is the product's (:mod:`miracle.threads`) unless
``--threads`` fixes it.

    python benchmarks/training.py --json           # one JSON line
    python benchmarks/training.py --busy --json    # the same with one core kept busy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from miracle import threads
from miracle.config import CompressConfig
from miracle.data import load
from miracle.models import create_model, get_model_spec
from miracle.provenance import provenance
from miracle.training import Trainer, batch_indices
from miracle.variational import VariationalModel


class PlainStep:
    """A deterministic training step of the model itself: what the posterior's step is against."""

    def __init__(self, model: nn.Module, data, config) -> None:
        self.model, self.data, self.config = model, data, config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.step = 0

    def train_step(self) -> None:
        index = batch_indices(self.step, len(self.data), self.config.batch_size, self.config.seed)
        loss = nn.functional.cross_entropy(self.model(self.data.images[index]), self.data.labels[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1


def make_steppers(model_name: str, budget: str, batch_size: int, data) -> dict:
    steppers = {"plain": None, "mean_kl": None, "mean_var": None}
    for key, param in (("mean_kl", "mean-kl"), ("mean_var", "mean-var")):
        config = CompressConfig.for_model(model_name, budget=budget, param=param, batch_size=batch_size)
        vmodel = VariationalModel(create_model(model_name, 0), config.variational_for(create_model(model_name, 0)))
        steppers[key] = Trainer(vmodel, data, config.train)
    steppers["plain"] = PlainStep(create_model(model_name, 0), data, steppers["mean_kl"].config)
    return steppers


def measure(steppers: dict, rounds: int, steps_per_round: int, warmup: int) -> dict[str, float]:
    for stepper in steppers.values():
        for _ in range(warmup):
            stepper.train_step()
    per_round = {key: [] for key in steppers}
    for _ in range(rounds):
        for key, stepper in steppers.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                stepper.train_step()
            per_round[key].append(1000 * (time.perf_counter() - start) / steps_per_round)
    return {key: statistics.median(values) for key, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu", choices=sorted(get_model_spec.__globals__["_REGISTRY"]))
    parser.add_argument("--budget", default="1.52KB")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="fix the thread count (default: the product's)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy in another process")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    else:
        threads.configure()
    data = load("mnist", "train")
    steppers = make_steppers(args.model, args.budget, args.batch_size, data)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        if busy:
            time.sleep(0.5)  # let the scheduler see the other process
        ms = measure(steppers, args.rounds, args.steps_per_round, args.warmup)
    finally:
        if busy:
            busy.kill()
            busy.wait()
    result = {
        "model": args.model, "batch_size": args.batch_size, "busy_core": args.busy,
        "threads": torch.get_num_threads(), "thread_policy": threads.describe(),
        "plain_ms": round(ms["plain"], 2), "mean_kl_ms": round(ms["mean_kl"], 2),
        "mean_var_ms": round(ms["mean_var"], 2),
        "mean_kl_over_plain": round(ms["mean_kl"] / ms["plain"], 3),
        "mean_var_over_plain": round(ms["mean_var"] / ms["plain"], 3),
        "mean_kl_over_mean_var": round(ms["mean_kl"] / ms["mean_var"], 3),
        "load_average": os.getloadavg()[0],
        **provenance(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
