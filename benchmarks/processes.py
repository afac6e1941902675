"""Training step time in one process against two under torchrun (a benchmark, not a timed test).

Runs `miracle train` on the same settings twice, one after the other: one process with two
threads, then `torchrun --nproc-per-node 2` with one thread in each process (gloo), the global
batch the same. Prints one JSON line with the ms per step of each and their ratio, and writes
it to --out.

    python benchmarks/processes.py --out results/benchmarks/processes-lenet5-relu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from miracle.provenance import provenance


def _train(launcher: list[str], threads: int, folder: Path, args) -> dict:
    command = [*launcher, "-m", "miracle", "train", "--model", args.model, "--dataset", args.dataset,
               "--budget", args.budget, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--threads", str(threads), "--quiet", "--json", "--out", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {"step_ms": summary["step_ms"], "threads_per_process": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--budget", default="1.52KB")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = _train([sys.executable], 2, Path(tmp, "one"), args)
        two = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], 1,
                     Path(tmp, "two"), args)
    figures = {
        "model": args.model, "dataset": args.dataset, "budget": args.budget, "steps": args.steps,
        "batch_size": args.batch_size, "seeds": [0],
        "one_process": one, "two_processes": two, "ratio_two_to_one": round(two["step_ms"] / one["step_ms"], 3),
        **provenance(),
    }
    print(json.dumps(figures))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
