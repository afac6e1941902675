"""The ``miracle`` command line. Errors the user can fix exit with status 2 and one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import data as data_module
from .errors import MiracleError
from .models import create_model, get_model_spec, model_names
from .posteriors import POSTERIORS
from .provenance import provenance
from .training import TrainConfig, Trainer, evaluate_posterior
from .units import parse_budget_bits
from .variational import VariationalConfig, VariationalModel


def _add_variational_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"registered model: {', '.join(model_names())}")
    p.add_argument("--dataset", required=True, help=f"dataset: {', '.join(data_module.DATASETS)}")
    p.add_argument("--param", default="mean-kl", help=f"posterior: {', '.join(POSTERIORS)} (default mean-kl)")
    p.add_argument("--budget", required=True, help="total budget, e.g. 1.5KB (1 KB = 1000 bytes), 12000bits")
    p.add_argument("--bits-per-block", type=int, default=16, help="C_loc, 1..24 (default 16)")
    p.add_argument("--no-hashing", action="store_true", help="one free variable per weight")
    p.add_argument("--kl-bits", type=float, default=None, help="Mean-KL: KL per block (default: bits per block)")
    p.add_argument("--beta-initial", type=float, default=VariationalConfig.beta_initial, help="Mean-Var: initial beta")
    p.add_argument("--eps-beta", type=float, default=VariationalConfig.eps_beta, help="Mean-Var: annealing rate")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-2 Mean-KL, 1e-3 Mean-Var)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice of the run")
    p.add_argument("--data-dir", default=None, help="folder with the datasets (default: $MIRACLE_DATA, then the cache)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_variational(args) -> VariationalModel:
    spec = get_model_spec(args.model)
    config = VariationalConfig(
        budget_bits=parse_budget_bits(args.budget),
        param=args.param,
        bits_per_block=args.bits_per_block,
        group_sizes={} if args.no_hashing else spec.group_sizes,
        hash_seed=args.seed,
        partition_seed=args.seed,
        kl_bits=args.kl_bits,
        beta_initial=args.beta_initial,
        eps_beta=args.eps_beta,
    )
    return VariationalModel(create_model(args.model), config)


def cmd_train(args) -> dict:
    if args.steps < 1 or args.batch_size < 1:
        raise MiracleError("--steps and --batch-size must be at least 1")
    if args.lr is not None and not 0 < args.lr < float("inf"):
        raise MiracleError(f"the learning rate must be a positive number, got {args.lr}")
    vmodel = build_variational(args)
    train_split = data_module.load(args.dataset, "train", args.data_dir)
    test_split = data_module.load(args.dataset, "test", args.data_dir)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    trainer = Trainer(vmodel, train_split, config, args.out, {"model": args.model, "dataset": args.dataset})
    trainer.run(progress=not args.quiet)
    scores = evaluate_posterior(vmodel, test_split, args.seed)
    summary = {
        "model": args.model,
        "dataset": args.dataset,
        "param": args.param,
        "test_accuracy": scores["test_accuracy_sample"],
        **scores,
        **vmodel.kl_summary(),
        "steps": trainer.step,
        "seconds": round(trainer.seconds, 2),
        "step_ms": round(trainer.step_ms(), 2),
        "checkpoint": str(Path(args.out) / "checkpoint.pt"),
        **provenance(),
    }
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_train_summary(s: dict) -> None:
    print(
        f"{s['model']} on {s['dataset']}, {s['param']}, {s['steps']} steps in {s['seconds']:.0f} s "
        f"({s['step_ms']:.0f} ms/step)\n"
        f"test accuracy: {100 * s['test_accuracy_sample']:.2f}% (posterior sample), "
        f"{100 * s['test_accuracy_mean']:.2f}% (posterior mean)\n"
        f"KL: {s['kl_bits_total']:.0f} bits in {s['blocks']} blocks of {s['bits_per_block']} bits "
        f"(per block {s['kl_bits_per_block_min']:.3f} to {s['kl_bits_per_block_max']:.3f})\n"
        f"checkpoint: {s['checkpoint']}"
    )


def cmd_data_fetch(args) -> dict:
    target = Path(args.dir) if args.dir else None
    names = data_module.DATASETS if args.dataset == "all" else (args.dataset,)
    log = (lambda msg: None) if args.json else print
    return {name: str(data_module.fetch(name, target, log=log)) for name in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miracle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a variational posterior within a budget")
    _add_variational_options(train)
    train.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, summary.json")
    _common(train)
    train.set_defaults(func=cmd_train, printer=print_train_summary)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download and verify datasets into the cache")
    fetch.add_argument("--dataset", default="all", choices=("all", *data_module.DATASETS))
    fetch.add_argument("--dir", default=None, help=f"target folder (default {data_module.cache_dir()})")
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(func=cmd_data_fetch, printer=lambda result: None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MiracleError as exc:
        print(f"miracle: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miracle: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        args.printer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
