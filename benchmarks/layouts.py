"""A whole compression in each memory layout, side by side (a benchmark, not a timed test).

Runs the demo's compression of LeNet-5 on MNIST (`--preset demo`, 1.52 KB, seed 0) twice at
once, in two processes of one thread each, as `miracle study --jobs 2` runs its runs: the model
in channels_last (the built-in LeNet-5's own layout) and in the default layout. Prints one JSON
line with each run's training, coding and whole seconds, the seconds of one evaluation of its
decoded network on the test set, its file's size and test error, and the ratio of each time in
the default layout to channels_last's; writes it to --out. The faster run ends first and leaves
the slower one the machine to itself for its last minutes, which flatters the slower one.

    python benchmarks/layouts.py --out results/benchmarks/layouts-compress.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from miracle import compress, files
from miracle.batches import accuracy
from miracle.data import load
from miracle.models import create_model
from miracle.provenance import provenance

LAYOUTS = {"channels_last": torch.channels_last, "default": torch.contiguous_format}
TIMES = ("train_seconds", "coding_seconds", "seconds", "evaluate_seconds")


def run_one(layout: str, folder: Path, args) -> dict:
    """One compression with the model in ``layout``, in this process, on one thread."""
    model = create_model(args.model).to(memory_format=LAYOUTS[layout])
    test = load(args.dataset, "test", args.data_dir)
    result = compress(model, load(args.dataset, "train", args.data_dir), args.budget, folder / "model.mrc",
                      preset="demo", threads=1, model_name=args.model, data_name=args.dataset, progress=False)
    start = time.perf_counter()
    test_error = 1 - accuracy(result.decoded_model(), test)
    return {"train_seconds": round(result.train_seconds, 1), "coding_seconds": round(result.coding_seconds, 1),
            "seconds": round(result.seconds, 1), "evaluate_seconds": round(time.perf_counter() - start, 2),
            "size_bytes": result.size_bytes, "test_error": round(test_error, 6)}


def run_both(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        children = {}
        for layout in LAYOUTS:
            command = [sys.executable, __file__, "--one", layout, "--work", str(Path(tmp, layout)),
                       "--model", args.model, "--dataset", args.dataset, "--budget", args.budget]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            Path(tmp, layout).mkdir()
            children[layout] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs = {}
        for layout, child in children.items():
            stdout, stderr = child.communicate()
            if child.returncode != 0:
                sys.exit(f"the {layout} run failed:\n{stderr[-2000:]}")
            runs[layout] = json.loads(stdout.strip().splitlines()[-1])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--budget", default="1.52KB")
    parser.add_argument("--data-dir", default=None, help="folder with the dataset (default: $MIRACLE_DATA, then the cache)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--one", choices=LAYOUTS, help=argparse.SUPPRESS)  # a child: one run, its JSON on stdout
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.work), args)))
        return
    runs = run_both(args)
    figures = {
        "model": args.model, "dataset": args.dataset, "budget": args.budget, "preset": "demo", "seeds": [0],
        "processes": 2, "threads_per_process": 1, **runs,
        "default_over_channels_last": {key: round(runs["default"][key] / runs["channels_last"][key], 3)
                                       for key in TIMES},
        **provenance(),
    }
    print(json.dumps(figures))
    if args.out:
        files.write_json(args.out, figures)


if __name__ == "__main__":
    main()
