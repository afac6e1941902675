"""The ``miracle`` command line. Errors the user can fix exit with status 2 and one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from . import coder
from . import data as data_module
from . import threads
from .budget import INDEX, Budget
from .compress import check_writable, decompress, index_bits_for, run_compression, work_dir_for
from .errors import MiracleError
from .fileformat import FORMAT_VERSION, byte_breakdown, packed_size, read_mrc
from .models import create_model, get_model_spec, model_names
from .posteriors import POSTERIORS, MeanKL
from .presets import PRESETS, get_preset
from .progressive import CodingConfig
from .provenance import provenance
from .published import MIRACLE_LENET5_MNIST
from .training import TrainConfig, Trainer, accuracy, evaluate_posterior, load_checkpoint, save_atomic
from .variational import VariationalConfig, VariationalModel



def _variational_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help=f"registered model: {', '.join(model_names())}")
    p.add_argument("--dataset", required=required, help=f"dataset: {', '.join(data_module.DATASETS)}")
    p.add_argument("--param", default="mean-kl", help=f"posterior: {', '.join(POSTERIORS)} (default mean-kl)")
    p.add_argument("--budget", default=None,
                   help="the size of the whole file, e.g. 1.52KB (1 KB = 1000 bytes), 1520B")
    p.add_argument("--index-budget", default=None,
                   help="instead of --budget: the indices alone, as papers count (e.g. 1.5KB, 12000bits)")
    p.add_argument("--bits-per-block", type=int, default=16, help="C_loc, 1..24 (default 16)")
    p.add_argument("--no-hashing", action="store_true", help="one free variable per weight")
    p.add_argument("--kl-bits", type=float, default=None, help="Mean-KL: KL per block (default: bits per block)")
    p.add_argument("--mean-kl-form", default=VariationalConfig.mean_kl_form, choices=MeanKL.FORMS,
                   help="Mean-KL: how a block's KL is split (default free-mean; see the README)")
    p.add_argument("--beta-initial", type=float, default=VariationalConfig.beta_initial, help="Mean-Var: initial beta")
    p.add_argument("--eps-beta", type=float, default=VariationalConfig.eps_beta, help="Mean-Var: annealing rate")
    p.add_argument("--steps", type=int, default=None, help=f"training steps before coding (default {TrainConfig.steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {TrainConfig.batch_size}")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-2)")
    p.add_argument("--lr-schedule", default=None, choices=("cosine", "constant"),
                   help=f"default {TrainConfig.lr_schedule}")
    p.add_argument("--weight-samples", type=int, default=None,
                   help="weight samples per training step, each on its share of the batch (default 1)")
    p.add_argument("--kl-anneal-from", type=float, default=None,
                   help="start with every block's budget this many times wider (default 1: no annealing)")
    p.add_argument("--kl-anneal-steps", type=int, default=None,
                   help="training steps over which the budget narrows to the real one")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice of the run")


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=threads.AUTO,
                   help="threads to compute with: a number, or auto (default: the cores idle at the start)")


def _preset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help=f"a named schedule: {', '.join(PRESETS)}; options given explicitly win (see the README)")


# Options a preset may set, with the defaults they take without one.
SCHEDULE_DEFAULTS = {
    **{name: getattr(TrainConfig, name) for name in
       ("steps", "batch_size", "lr_schedule", "weight_samples", "kl_anneal_from", "kl_anneal_steps")},
    **{name: getattr(CodingConfig, name) for name in ("blocks_per_group", "retrain_steps", "retrain_lr", "rule")},
    "lr": None,
}


def apply_preset(args: argparse.Namespace) -> None:
    """Fill the schedule options the user left out: from ``--preset``, else the defaults."""
    if not hasattr(args, "steps"):  # a command without a schedule (the study's presets are its own)
        return
    preset = get_preset(args.preset) if args.preset else {}
    for name, default in SCHEDULE_DEFAULTS.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, preset.get(name, default))


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="folder with the datasets (default: $MIRACLE_DATA, then the cache)")


def _configs(args, budget: Budget) -> tuple[VariationalConfig, TrainConfig]:
    if args.steps < 1 or args.batch_size < 1:
        raise MiracleError("--steps and --batch-size must be at least 1")
    if args.lr is not None and not 0 < args.lr < float("inf"):
        raise MiracleError(f"the learning rate must be a positive number, got {args.lr}")
    group_sizes = {} if args.no_hashing else get_model_spec(args.model).group_sizes
    index_bits = index_bits_for(budget,
                                create_model(args.model, args.seed), bits_per_block=args.bits_per_block,
                                group_sizes=group_sizes, seed=args.seed, model_name=args.model)
    vconfig = VariationalConfig(
        budget_bits=index_bits, param=args.param, bits_per_block=args.bits_per_block,
        group_sizes=group_sizes, hash_seed=args.seed,
        partition_seed=args.seed, kl_bits=args.kl_bits, mean_kl_form=args.mean_kl_form,
        beta_initial=args.beta_initial, eps_beta=args.eps_beta,
    )
    tconfig = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          lr_schedule=args.lr_schedule, seed=args.seed, weight_samples=args.weight_samples,
                          kl_anneal_from=args.kl_anneal_from, kl_anneal_steps=args.kl_anneal_steps)
    return vconfig, tconfig


def _posterior_summary(trainer: Trainer, scores: dict, train_seconds: float) -> dict:
    vmodel = trainer.vmodel
    return {
        "param": vmodel.config.param,
        "test_accuracy": scores["test_accuracy_sample"],
        **scores,
        **vmodel.kl_summary(),
        "steps": trainer.config.steps,
        "train_seconds": round(train_seconds, 2),
        "step_ms": round(1000 * train_seconds / max(trainer.config.steps, 1), 2),
    }


def cmd_train(args) -> dict:
    vconfig, tconfig = _configs(args, Budget.from_options(args.budget, args.index_budget))
    threads.use_threads(args.threads)
    train_split = data_module.load(args.dataset, "train", args.data_dir)
    test_split = data_module.load(args.dataset, "test", args.data_dir)
    trainer = Trainer(VariationalModel(create_model(args.model, tconfig.seed), vconfig), train_split, tconfig, args.out,
                      {"model": args.model, "dataset": args.dataset})
    trainer.run(progress=not args.quiet)
    summary = {
        "model": args.model, "dataset": args.dataset,
        **_posterior_summary(trainer, evaluate_posterior(trainer.vmodel, test_split, tconfig.seed), trainer.seconds),
        "seconds": round(trainer.seconds, 2),
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


def _compress_setup(args):
    """(model name, dataset, budget, vconfig, tconfig, start_from) from the options or from --from."""
    if args.from_checkpoint is None:
        missing = [f"--{k}" for k in ("model", "dataset") if getattr(args, k) is None]
        missing += ["--budget"] if args.budget is None and args.index_budget is None else []
        if missing:
            raise MiracleError(f"compress needs {', '.join(missing)} (or --from CHECKPOINT of `miracle train`)")
        budget = Budget.from_options(args.budget, args.index_budget)
        return (args.model, args.dataset, budget, *_configs(args, budget), None)
    state = load_checkpoint(args.from_checkpoint)
    identity = state["identity"]
    if args.model is not None and args.model != identity["model"]:
        raise MiracleError(f"{args.from_checkpoint} is a checkpoint of {identity['model']}, not of {args.model}")
    if args.dataset is not None and args.dataset != identity["dataset"]:
        raise MiracleError(f"{args.from_checkpoint} was trained on {identity['dataset']}, not on {args.dataset}")
    # Training is over at the checkpoint's step; coding retrains with its settings.
    tconfig = TrainConfig(**{**identity["train"], "steps": state["step"]})
    vconfig = VariationalConfig(**identity["variational"])
    return identity["model"], identity["dataset"], Budget(vconfig.budget_bits, INDEX), vconfig, tconfig, \
        args.from_checkpoint


def cmd_compress(args) -> dict:
    model_name, dataset, budget, vconfig, tconfig, start_from = _compress_setup(args)
    threads.use_threads(args.threads)
    coding = CodingConfig(args.blocks_per_group, args.retrain_steps, args.rule, coder_seed=tconfig.seed,
                          sender_seed=tconfig.seed, retrain_lr=args.retrain_lr)
    train_split = data_module.load(dataset, "train", args.data_dir)
    test_split = data_module.load(dataset, "test", args.data_dir)
    model = create_model(model_name, tconfig.seed)
    work = Path(args.work_dir) if args.work_dir else work_dir_for(args.output)
    trainer = Trainer(VariationalModel(model, vconfig), train_split, tconfig, work,
                      {"model": model_name, "dataset": dataset, "coding": coding.to_dict()})
    result = run_compression(trainer, coding, args.output, model_name, not args.quiet, start_from, test_split)
    # The figures of the file come from the file, decoded as a receiver would.
    decoded = decompress(args.output)
    test_accuracy = accuracy(decoded, test_split)
    float32_bytes = 4 * sum(p.numel() for p in decoded.parameters())
    summary = {
        "output": str(args.output),
        "model": model_name,
        "dataset": dataset,
        "size_bytes": result.size_bytes,
        "ratio": round(float32_bytes / result.size_bytes, 1),
        "test_error": round(1 - test_accuracy, 6),
        "test_accuracy": test_accuracy,
        "index_bits": result.index_bits,
        "index_bytes": packed_size(result.num_blocks, result.bits_per_block),
        "side_bytes": result.size_bytes - packed_size(result.num_blocks, result.bits_per_block),
        "budget": dataclasses.asdict(budget),
        "blocks": result.num_blocks,
        "bits_per_block": result.bits_per_block,
        # Training alone (the trainer's clock goes on through the retraining while coding).
        "before_coding": (_posterior_summary(trainer, result.before_coding, result.train_seconds)
                          if result.before_coding else None),
        "preset": args.preset,
        "coding": coding.to_dict(),
        "threads": torch.get_num_threads(),
        "seconds": round(result.seconds, 2),
        "miracle_published": MIRACLE_LENET5_MNIST,
        **provenance(),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_compress_summary(s: dict) -> None:
    before = s["before_coding"]
    if before:
        print(f"trained {before['steps']} steps ({before['step_ms']:.0f} ms/step): posterior sample "
              f"{100 * before['test_accuracy_sample']:.2f}%, mean {100 * before['test_accuracy_mean']:.2f}%")
    print(
        f"{s['output']}: {s['size_bytes']} bytes, everything included ({s['index_bytes']} of them indices: "
        f"{s['blocks']} blocks x {s['bits_per_block']} bits), {s['ratio']:.0f}x smaller than float32\n"
        f"test error of the decoded file: {100 * s['test_error']:.2f}% on {s['dataset']}\n"
        f"wall time: {s['seconds']:.0f} s ({s['threads']} threads)"
    )
    if (s["model"], s["dataset"]) in (("lenet5", "mnist"), ("lenet5-relu", "mnist")):
        points = ", ".join(f"{100 * p['test_error']:.2f}% at {p['size_bytes']:,} bytes" for p in MIRACLE_LENET5_MNIST)
        print(f"MIRACLE (published, LeNet-5 on MNIST, index bytes alone): {points}")


def cmd_decompress(args) -> dict:
    check_writable(args.output)
    model = decompress(args.file)
    out = Path(args.output)
    save_atomic(model.state_dict(), out)
    return {"output": str(out), "model": read_mrc(args.file).model_name,
            "parameters": sum(p.numel() for p in model.parameters())}


def cmd_evaluate(args) -> dict:
    model = decompress(args.file)
    test_split = data_module.load(args.dataset, "test", args.data_dir)
    test_accuracy = accuracy(model, test_split)
    return {"file": str(args.file), "model": read_mrc(args.file).model_name, "dataset": args.dataset,
            "size_bytes": Path(args.file).stat().st_size, "test_error": round(1 - test_accuracy, 6),
            "test_accuracy": test_accuracy}


def cmd_inspect(args) -> dict:
    contents = read_mrc(args.file)
    return {
        "file": str(args.file),
        "format_version": FORMAT_VERSION,
        "model": contents.model_name,
        "fingerprint": contents.fingerprint.hex(),
        "blocks": contents.num_blocks,
        "bits_per_block": contents.bits_per_block,
        "index_bits": contents.num_blocks * contents.bits_per_block,
        "block_dim": contents.block_dim,
        "generator_version": contents.generator_version,
        "seeds": {"coder": contents.coder_seed, "hash": contents.hash_seed, "partition": contents.partition_seed},
        "group_sizes": contents.group_sizes,
        "prior_scales": [float(f"{v:.6g}") for v in contents.prior_scales.tolist()],
        "uncoded_tensors": list(contents.uncoded),
        **byte_breakdown(Path(args.file).read_bytes()),
    }


def print_inspect(s: dict) -> None:
    for key, value in s.items():
        print(f"{key:>18}: {value}")


def cmd_data_fetch(args) -> dict:
    target = Path(args.dir) if args.dir else None
    names = data_module.DATASETS if args.dataset == "all" else (args.dataset,)
    log = (lambda msg: None) if args.json else print
    return {name: str(data_module.fetch(name, target, log=log)) for name in names}


def cmd_study(args) -> dict:
    from .study import get_preset, run_study, write_report

    config = get_preset(args.preset)
    overrides = {k: v for k, v in (("budget", args.budget), ("seeds", args.seeds), ("dataset", args.dataset))
                 if v is not None}
    config = dataclasses.replace(config, **overrides)
    if args.jobs < 1:
        raise MiracleError("--jobs must be at least 1")
    out = Path(args.out)
    log = (lambda msg: None) if args.json else print
    summary = run_study(config, out, args.preset, args.data_dir, args.jobs, log)
    report = write_report(out / "json", out)
    return {"report": str(report), "json": str(out / "json"), "mean_var_chosen": summary["mean_var_chosen"],
            "seconds_this_invocation": summary["seconds_this_invocation"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miracle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a variational posterior within a budget")
    _variational_options(train)
    _preset_option(train)
    _data_dir_option(train)
    _threads_option(train)
    train.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, summary.json")
    _output_options(train)
    train.set_defaults(func=cmd_train, printer=print_train_summary)

    compress = sub.add_parser("compress", help="train and code a model into a .mrc file")
    _variational_options(compress, required=False)
    _preset_option(compress)
    _data_dir_option(compress)
    _threads_option(compress)
    compress.add_argument("-o", "--output", required=True, help="the .mrc file to write")
    compress.add_argument("--from", dest="from_checkpoint", default=None,
                          help="code a model trained by `miracle train` (its checkpoint.pt)")
    compress.add_argument("--work-dir", default=None,
                          help="checkpoint, metrics and summary of the run (default: OUTPUT.work)")
    compress.add_argument("--blocks-per-group", type=int, default=None,
                          help=f"blocks coded between two retrainings (default {CodingConfig.blocks_per_group})")
    compress.add_argument("--retrain-steps", type=int, default=None,
                          help=f"retraining steps between groups (default {CodingConfig.retrain_steps})")
    compress.add_argument("--retrain-lr", type=float, default=CodingConfig.retrain_lr,
                          help="Adam learning rate of retraining between groups (default 1e-2 Mean-KL, 1e-3 Mean-Var)")
    compress.add_argument("--rule", default=None, choices=coder.RULES,
                          help=f"how the sender picks a candidate (default {CodingConfig.rule}; see the README)")
    _output_options(compress)
    compress.set_defaults(func=cmd_compress, printer=print_compress_summary)

    decompress_p = sub.add_parser("decompress", help="turn a .mrc file into a PyTorch state_dict file")
    decompress_p.add_argument("file")
    decompress_p.add_argument("-o", "--output", required=True)
    decompress_p.add_argument("--json", action="store_true")
    decompress_p.set_defaults(func=cmd_decompress, printer=lambda s: print(f"wrote {s['output']} ({s['model']})"))

    evaluate = sub.add_parser("evaluate", help="test error of the network in a .mrc file")
    evaluate.add_argument("file")
    evaluate.add_argument("--dataset", required=True)
    _data_dir_option(evaluate)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate, printer=lambda s: print(
        f"{s['file']} ({s['model']}, {s['size_bytes']} bytes): test error {100 * s['test_error']:.2f}% "
        f"(accuracy {100 * s['test_accuracy']:.2f}%) on {s['dataset']}"))

    inspect = sub.add_parser("inspect", help="header and byte breakdown of a .mrc file")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect, printer=print_inspect)

    study = sub.add_parser("study", help="Mean-KL against Mean-Var: runs, figures as JSON, report.md")
    study.add_argument("--preset", required=True, help="quick (minutes) or full (LeNet-5 / MNIST, hours)")
    study.add_argument("--out", required=True, help="study folder; the same command again resumes it")
    study.add_argument("--budget", default=None, help="budget of the main comparison (default: the preset's)")
    study.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    study.add_argument("--dataset", default=None, help="dataset (default: the preset's)")
    study.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each (default 1)")
    _data_dir_option(study)
    study.add_argument("--json", action="store_true")
    study.set_defaults(func=cmd_study, printer=lambda s: print(f"report: {s['report']}"))

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
        apply_preset(args)
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
