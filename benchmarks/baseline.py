"""The uncompressed reference: a registered model trained plainly (its own weights, no posterior).

Trains with Adam and a cosine learning-rate schedule on batches drawn from the seed exactly as
`compress` draws them, evaluates on the test split, and writes a JSON summary. With
``--weights`` it also saves the trained ``state_dict``, the natural ``--init-from`` for
``miracle compress``:

    python benchmarks/baseline.py --model vgg-bn --dataset fashion-mnist --steps 1500 \\
        --out results/vgg/vgg-bn-fashion-mnist-plain.json --weights vgg-bn-fashion-mnist.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from miracle import files, threads
from miracle.batches import accuracy
from miracle.config import CompressConfig
from miracle.data import DATASETS, load
from miracle.models import create_model, model_names
from miracle.provenance import peak_rss_mb, provenance
from training import PlainStep  # benchmarks/training.py: the same plain step it times


def train_plain(model: nn.Module, data, *, steps: int, batch_size: int, lr: float, seed: int,
                log_every: int = 100) -> float:
    """Train `model` in place with the benchmark's plain step on a cosine schedule; returns the
    mean training seconds per step."""
    stepper = PlainStep(model, data, CompressConfig(batch_size=batch_size, seed=seed), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        stepper.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        stepper.train_step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}", file=sys.stderr, flush=True)
    model.eval()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu", choices=model_names())
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default=threads.AUTO)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="the JSON summary to write")
    parser.add_argument("--weights", default=None, help="also save the trained state_dict here")
    args = parser.parse_args()

    used_threads = threads.use_threads(args.threads)
    train, test = load(args.dataset, "train", args.data_dir), load(args.dataset, "test", args.data_dir)
    model = create_model(args.model, seed=args.seed)
    start = time.perf_counter()
    step_seconds = train_plain(model, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed)
    test_accuracy = accuracy(model, test)
    summary = {
        "model": args.model, "dataset": args.dataset, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "seeds": [args.seed], "threads": used_threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "float32_bytes": 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
        "test_error": round(1 - test_accuracy, 4), "step_ms": round(1000 * step_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        **provenance(),
    }
    if args.weights:
        files.save_torch(model.state_dict(), args.weights)
        summary["weights"] = args.weights
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    files.write_json(args.out, summary, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
