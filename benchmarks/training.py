"""What a variational training step costs against a plain one (a benchmark, not a timed test).

Times, in one process and on the same batches, three training steps of the same network:

- plain: the model's own weights, Adam, the loss of the batch (no posterior);
- Mean-KL and Mean-Var: one step of :class:`miracle.training.Trainer` at the given budget.

The three are timed in interleaved rounds (plain, Mean-KL, Mean-Var, plain, ...) so that a
change in the machine's load hits all three alike; each figure is the median over rounds of
the mean step time in a round. With ``--busy`` another process spins on one core in some
rounds and is stopped in the others, so that three conditions are measured in the same run:
idle with the product's threads, idle with one thread, and busy with the product's threads.
With ``--layouts`` each step is also timed with the model in the default memory layout, with
``--bfloat16`` in the product's bfloat16 precision (``--precision bfloat16``). The
threading is the product's (:mod:`miracle.threads`: as many threads as cores are idle when the
run starts, the other process already running) unless ``--threads`` fixes it.

    python benchmarks/training.py --json           # one JSON line
    python benchmarks/training.py --busy --json    # the same with one core kept busy
    python benchmarks/training.py --layouts --json # also each step in the default memory layout
    python benchmarks/training.py --bfloat16 --json # also each step in bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from miracle import threads
from miracle.batches import batch_indices
from miracle.compress import build_trainer
from miracle.config import CompressConfig
from miracle.data import load
from miracle.models import create_model, model_names
from miracle.provenance import provenance
from miracle.training import autocast


class PlainStep:
    """A deterministic training step of the model itself: what the posterior's step is against."""

    def __init__(self, model: nn.Module, data, config, lr: float = 1e-3) -> None:
        self.model, self.data, self.config = model, data, config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.step = 0

    def train_step(self) -> None:
        index = batch_indices(self.step, len(self.data), self.config.batch_size, self.config.seed)
        with autocast(self.config.precision, self.data.images.device):
            outputs = self.model(self.data.images[index])
        loss = nn.functional.cross_entropy(outputs.float(), self.data.labels[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1


def make_steppers(model_name: str, budget: str, batch_size: int, data, layouts: bool = False,
                  bfloat16: bool = False) -> dict:
    """The steps to time; with ``layouts`` also the same three steps of the model kept in the
    default (contiguous) memory layout instead of its own (channels_last for the built-in
    LeNet-5), with ``bfloat16`` also the same three steps in bfloat16."""
    variants = {"": (lambda: create_model(model_name), "float32")}
    if layouts:
        variants["_default_layout"] = (
            lambda: create_model(model_name).to(memory_format=torch.contiguous_format), "float32")
    if bfloat16:
        variants["_bfloat16"] = (lambda: create_model(model_name), "bfloat16")
    steppers = {}
    for suffix, (new_model, precision) in variants.items():
        steppers["plain" + suffix] = PlainStep(new_model(), data, CompressConfig(batch_size=batch_size,
                                                                               precision=precision))
        for key, param in (("mean_kl", "mean-kl"), ("mean_var", "mean-var")):
            config = CompressConfig(budget=budget, param=param, batch_size=batch_size, precision=precision)
            steppers[key + suffix] = build_trainer(new_model(), data, config, None, model_name=model_name)
    return steppers


def measure(steppers: dict, conditions: list[tuple[str, int]], busy, rounds: int, steps_per_round: int,
            warmup: int) -> dict[str, dict[str, float]]:
    """ms per step of every stepper under every condition (name, threads), interleaved: each
    round runs every condition and every stepper once. Conditions named "busy..." run with the
    busy process going, the others with it stopped (SIGSTOP)."""
    for stepper in steppers.values():
        for _ in range(warmup):
            stepper.train_step()
    per_round = {(condition, key): [] for condition, _ in conditions for key in steppers}
    for _ in range(rounds):
        for condition, count in conditions:
            if busy:
                busy.send_signal(signal.SIGCONT if condition.startswith("busy") else signal.SIGSTOP)
                time.sleep(0.05)
            torch.set_num_threads(count)
            for key, stepper in steppers.items():
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    stepper.train_step()
                per_round[condition, key].append(1000 * (time.perf_counter() - start) / steps_per_round)
    ms = {condition: {} for condition, _ in conditions}
    for (condition, key), values in per_round.items():
        ms[condition][key] = round(statistics.median(values), 2)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu", choices=model_names())
    parser.add_argument("--budget", default="1.52KB")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", default=threads.AUTO,
                        help="a thread count, or auto (the product's default: the cores idle at the start)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy in another process")
    parser.add_argument("--layouts", action="store_true",
                        help="also time the model in the default memory layout instead of its own")
    parser.add_argument("--bfloat16", action="store_true", help="also time every step in bfloat16")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (default: $MIRACLE_DATA, then the cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    data = load("mnist", "train", args.data_dir)
    steppers = make_steppers(args.model, args.budget, args.batch_size, data, args.layouts, args.bfloat16)
    # The product's choice, made as a run would make it: with the other process running or not.
    conditions = [("idle", threads.use_threads(args.threads))]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        if busy:
            time.sleep(0.5)
            conditions += [("idle_1_thread", 1), ("busy", threads.use_threads(args.threads))]
        ms = measure(steppers, conditions, busy, args.rounds, args.steps_per_round, args.warmup)
    finally:
        if busy:
            busy.kill()
            busy.wait()
    result = {"model": args.model, "batch_size": args.batch_size, "threads_asked": args.threads,
              "threads": dict(conditions)}
    for condition, step_ms in ms.items():
        prefix = "" if condition == "idle" else condition + "_"
        result.update({f"{prefix}{key}_ms": value for key, value in step_ms.items()})
        result[f"{prefix}mean_kl_over_plain"] = round(step_ms["mean_kl"] / step_ms["plain"], 3)
        result[f"{prefix}mean_kl_over_mean_var"] = round(step_ms["mean_kl"] / step_ms["mean_var"], 3)
        if args.layouts:
            result.update({f"{prefix}{key}_default_layout_over_own_layout":
                           round(step_ms[key + "_default_layout"] / step_ms[key], 3)
                           for key in ("plain", "mean_kl", "mean_var")})
        if args.bfloat16:
            result.update({f"{prefix}{key}_float32_over_bfloat16": round(step_ms[key] / step_ms[key + "_bfloat16"], 3)
                           for key in ("plain", "mean_kl", "mean_var")})
    if busy:  # the target: a step with one core busy against a one-thread step on an idle machine
        result.update({f"busy_over_idle_1_thread_{key}": round(ms["busy"][key] / ms["idle_1_thread"][key], 3)
                       for key in steppers})
    result.update({"load_average": os.getloadavg()[0], **provenance()})
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
