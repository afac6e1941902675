"""Benchmark of the relative entropy coder on a LeNet-5-sized problem (not a timed test).

Codes G blocks of D dims with K = 2**bits candidates each (default: 608 blocks of 44 dims,
2**20 candidates, as MIRACLE's LeNet-5), with random q and p whose KL is about ``bits``:

- naive path: fresh candidates per block from ``torch.randn`` (a seeded torch.Generator),
  scored and drawn from the softmax; timed on the first ``--naive-blocks`` blocks only and
  extrapolated to all blocks (coding them all would take minutes);
- fast path (miracle.coder.encode): one bank of candidates for all blocks, per-block seeded
  transforms, blocks scored ``--group`` at a time by matrix products; timed on all blocks,
  *including* generating the bank (reported separately as bank_seconds).

Both paths run in the same process, one after the other. The load averages at the start
and the end are recorded: the fast path issues many multi-threaded operations and slows
down far more than the naive path when other processes compete for the two cores (then
``--threads 1`` is the fairer setting for both).

    python benchmarks/coder.py --json                 # one JSON line on stdout
    python benchmarks/coder.py --out results/x.json   # also written there (default results/coder_benchmark.json)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from miracle.coder import clear_caches, decode, encode, kl_bits
from miracle.coder.candidates import CandidateBank
from miracle.provenance import peak_rss_mb, provenance

REPO = Path(__file__).resolve().parents[1]


def random_problem(num_blocks: int, dim: int, bits: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (mu, sigma, s), float32 [G, D], with a KL of roughly ``bits`` bits per block.

    One prior scale per block (as one per weight tensor), sigma = rho * s with rho chosen so
    that each dimension carries about bits/D bits, and small random means.
    """
    generator = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.empty(num_blocks, 1).uniform_(-3.0, -1.0, generator=generator)).expand(num_blocks, dim)
    # KL per dim of N(0, rho^2 s^2) from N(0, s^2) is -ln rho + rho^2/2 - 1/2 nats; solve for the
    # target by bisection (monotone on (0, 1)), then jitter.
    target_nats = bits * math.log(2) / dim
    low, high = 1e-6, 1.0
    for _ in range(60):
        rho = (low + high) / 2
        if -math.log(rho) + rho * rho / 2 - 0.5 > target_nats:
            low = rho
        else:
            high = rho
    rho = rho * torch.empty(num_blocks, dim).uniform_(0.9, 1.1, generator=generator)
    sigma = rho * s
    mu = 0.3 * sigma * torch.randn(num_blocks, dim, generator=generator)
    return mu.float().contiguous(), sigma.float().contiguous(), s.float().contiguous()


def naive_encode_block(mu: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor, bits: int, seed: int) -> int:
    """The per-block baseline: K fresh normals from torch.randn, exact scores, softmax draw."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(1 << bits, mu.numel(), generator=generator)
    a = 0.5 - s * s / (2 * sigma * sigma)
    b = s * mu / (sigma * sigma)
    scores = (z * z) @ a + z @ b
    probabilities = torch.softmax(scores, dim=0)
    # torch.multinomial takes at most 2**24 categories, which bits <= 24 respects.
    return int(torch.multinomial(probabilities, 1, generator=generator))


def run(args: argparse.Namespace) -> dict:
    load_average = os.getloadavg()
    num_blocks, dim, bits = args.blocks, args.dim, args.bits
    num_candidates = 1 << bits
    mu, sigma, s = random_problem(num_blocks, dim, bits, args.seed)
    cand_dims_all = num_blocks * num_candidates * dim

    # Naive path, on a subset, extrapolated.
    naive_encode_block(mu[0], sigma[0], s[0], min(bits, 10), args.seed)  # warm-up, untimed
    start = time.perf_counter()
    for block in range(args.naive_blocks):
        naive_encode_block(mu[block], sigma[block], s[block], bits, args.seed + block)
    naive_seconds = time.perf_counter() - start
    naive_rate = args.naive_blocks * num_candidates * dim / naive_seconds

    # Fast path, all blocks, from a cold cache: bank generation included.
    clear_caches()
    start = time.perf_counter()
    CandidateBank(args.seed, dim, bits, cache_bytes=args.bank_cache_bytes)
    bank_seconds = time.perf_counter() - start
    indices = torch.empty(num_blocks, dtype=torch.int64)
    samples = torch.empty(num_blocks, dim)
    for first in range(0, num_blocks, args.group):
        group = slice(first, min(first + args.group, num_blocks))
        indices[group], samples[group] = encode(
            mu[group], sigma[group], s[group], bits, args.seed,
            block_ids=torch.arange(group.start, group.stop), rule=args.rule,
            sender_seed=args.seed + 1, bank_cache_bytes=args.bank_cache_bytes,
        )
    fast_seconds = time.perf_counter() - start
    fast_rate = cand_dims_all / fast_seconds

    start = time.perf_counter()
    decoded = decode(s, indices, bits, args.seed)
    decode_seconds = time.perf_counter() - start

    other_rule = "ordered" if args.rule == "mrc" else "mrc"
    start = time.perf_counter()
    for first in range(0, num_blocks, args.group):
        group = slice(first, min(first + args.group, num_blocks))
        encode(mu[group], sigma[group], s[group], bits, args.seed, block_ids=torch.arange(group.start, group.stop),
               rule=other_rule, bank_cache_bytes=args.bank_cache_bytes)
    other_rule_seconds = time.perf_counter() - start

    peak_rss = peak_rss_mb()
    kl = kl_bits(mu, sigma, s)
    return {
        **provenance(),
        "blocks": num_blocks,
        "dim": dim,
        "bits": bits,
        "candidates_per_block": num_candidates,
        "rule": args.rule,
        "group_size": args.group,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": round(load_average[0], 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "kl_bits_mean": round(float(kl.mean()), 3),
        "naive_blocks_timed": args.naive_blocks,
        "naive_seconds_timed": round(naive_seconds, 3),
        "naive_seconds_all_blocks_extrapolated": round(cand_dims_all / naive_rate, 1),
        "naive_cand_dims_per_s": float(f"{naive_rate:.4g}"),
        "fast_cand_dims_per_s": float(f"{fast_rate:.4g}"),
        "ratio": round(fast_rate / naive_rate, 1),
        "fast_seconds_all_blocks": round(fast_seconds, 3),
        "fast_seconds_include_bank": True,
        "bank_seconds": round(bank_seconds, 3),
        f"{other_rule}_seconds_all_blocks_bank_cached": round(other_rule_seconds, 3),
        "decode_seconds_all_blocks": round(decode_seconds, 4),
        "decode_matches_encode": bool(torch.equal(decoded, samples)),
        "peak_rss_mb": round(peak_rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a summary")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "coder_benchmark.json",
                        help="also write the JSON here (default: results/coder_benchmark.json in the repository)")
    parser.add_argument("--blocks", type=int, default=608)
    parser.add_argument("--dim", type=int, default=44)
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--group", type=int, default=32, help="blocks per encode call (default: %(default)s)")
    parser.add_argument("--naive-blocks", type=int, default=8, help="blocks timed on the naive path (default: %(default)s)")
    parser.add_argument("--rule", choices=("mrc", "ordered"), default="mrc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank-cache-bytes", type=int, default=1 << 30)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both paths (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not 1 <= args.naive_blocks <= args.blocks:
        parser.error("--naive-blocks must be in 1..--blocks")
    result = run(args)
    line = json.dumps(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")
    if args.json:
        print(line)
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
