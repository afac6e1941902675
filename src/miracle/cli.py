"""The ``miracle`` command line. Errors the user can fix exit with status 2 and one line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from . import coder
from . import data as data_module
from . import distributed, files, threads
from .compress import build_trainer, check_writable, compress, decompress, work_dir_for
from .config import CODING_FIELDS, CONFIG_FIELDS, CompressConfig
from .errors import InvalidInput, MiracleError
from .fileformat import FORMAT_VERSION, byte_breakdown, packed_size, read_mrc
from .models import build_model, is_registered, load_weights, model_names
from .posteriors import POSTERIORS, MeanKL
from .presets import PRESETS, get_preset
from .provenance import peak_rss_mb, provenance
from .published import MIRACLE_LENET5_MNIST
from .training import (DEFAULT_LR, DEFAULT_RETRAIN_LR, LR_SCHEDULES, PRECISIONS, accuracy, evaluate_posterior,
                       load_checkpoint)
from .variational import VariationalModel


def _per_posterior(values: dict[str, float]) -> str:
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values())):g}"
    return ", ".join(f"{value:g} for {param}" for param, value in values.items())


def _config_options(p: argparse.ArgumentParser, coding: bool) -> None:
    """The fields of :class:`CompressConfig` as options of the same names. An option left out
    takes the preset's value, else the configuration's default."""
    d = CompressConfig
    add = functools.partial(p.add_argument, default=argparse.SUPPRESS)
    add("--budget", help="the size of the whole file, e.g. 1.52KB (1 KB = 1000 bytes), 1520B")
    add("--index-budget", help="instead of --budget: the indices alone, as papers count (e.g. 1.5KB, 12000bits)")
    add("--param", choices=tuple(POSTERIORS), help=f"posterior (default {d.param})")
    add("--bits-per-block", type=int, help=f"C_loc, 1..24 (default {d.bits_per_block})")
    add("--no-hashing", dest="group_sizes", action="store_const", const={},
        help="one free variable per weight (default: the registered model's hashing)")
    add("--include", action="append", metavar="PATTERN",
        help="code only the parameters whose names match (fnmatch; repeat for several)")
    add("--exclude", action="append", metavar="PATTERN", help="do not code the parameters whose names match")
    add("--kl-bits", type=float, help="Mean-KL: KL per block (default: bits per block)")
    add("--mean-kl-form", choices=MeanKL.FORMS, help=f"Mean-KL: how a block's KL is split (default {d.mean_kl_form})")
    add("--mean-share", type=float,
        help=f"Mean-KL free-mean: the largest share of a block's KL its means may take (default {d.mean_share})")
    add("--beta-initial", type=float, help=f"Mean-Var: initial beta (default {d.beta_initial})")
    add("--eps-beta", type=float, help=f"Mean-Var: annealing rate (default {d.eps_beta})")
    add("--steps", type=int, help=f"training steps before coding (default {d.steps})")
    add("--batch-size", type=int, help=f"examples per step, over all processes (default {d.batch_size})")
    add("--lr", type=float, help=f"Adam learning rate (default {_per_posterior(DEFAULT_LR)})")
    add("--lr-schedule", choices=LR_SCHEDULES, help=f"default {d.lr_schedule}")
    add("--weight-samples", type=int,
        help=f"weight samples per training step, each on its share of the batch (default {d.weight_samples})")
    add("--kl-anneal-from", type=float,
        help="start with every block's budget this many times wider (default 1: no annealing)")
    add("--kl-anneal-steps", type=int, help="training steps over which the budget narrows to the real one")
    add("--random-shift-px", type=int,
        help="move each training image by up to this many pixels along each axis (default 0: no shifts)")
    add("--precision", choices=tuple(PRECISIONS),
        help=f"arithmetic of the network in training and retraining (default {d.precision}; see the README)")
    add("--checkpoint-every", type=int, help=f"training steps between two checkpoints (default {d.checkpoint_every})")
    if coding:
        add("--blocks-per-group", type=int, help=f"blocks coded between two retrainings (default {d.blocks_per_group})")
        add("--retrain-steps", type=int, help=f"retraining steps between groups (default {d.retrain_steps})")
        add("--retrain-lr", type=float,
            help=f"Adam learning rate of retraining between groups (default {_per_posterior(DEFAULT_RETRAIN_LR)})")
        add("--retrain-lr-schedule", choices=LR_SCHEDULES,
            help=f"constant, or cosine: decays over the whole coding (default {d.retrain_lr_schedule})")
        add("--rule", choices=coder.RULES, help=f"how the sender picks a candidate (default {d.rule}; see the README)")
    add("--seed", type=int, help="seed of every random choice of the run (default 0)")
    p.add_argument("--preset", default=None,
                   help=f"a named schedule: {', '.join(PRESETS)}; options given explicitly win (see the README)")


def _explicit_options(args: argparse.Namespace) -> dict:
    """The configuration options the user typed."""
    return {name: getattr(args, name) for name in CONFIG_FIELDS if hasattr(args, name)}


def _model_options(p: argparse.ArgumentParser, training: bool) -> None:
    p.add_argument("--model", default=None,
                   help=f"a registered model ({', '.join(model_names())}) or your own class as package.module:ClassName")
    p.add_argument("--model-args", default=None, metavar="JSON",
                   help="keyword arguments of your class, as a JSON object, e.g. '{\"width\": 64}'")
    if training:
        p.add_argument("--init-from", default=None, metavar="WEIGHTS",
                       help="a state_dict of trained weights (torch.save): the posterior's means start there")
        p.add_argument("--device", default=None, help="where to train: cpu (default), cuda, cuda:N or mps")


def _model_from_options(args, seed: int) -> nn.Module:
    try:
        model_args = json.loads(args.model_args) if args.model_args is not None else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--model-args is not valid JSON ({exc.msg}); give an object such as '{{\"width\": 64}}'")
    model = build_model(args.model, seed, model_args)
    if getattr(args, "init_from", None):
        load_weights(model, args.init_from)
    return model


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default=threads.AUTO,
                   help="threads to compute with: a number, or auto (default: the cores idle at the start)")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="folder with the datasets (default: $MIRACLE_DATA, then the cache)")


def _new_run(args) -> tuple[CompressConfig, nn.Module]:
    """The configuration and the model of a run started from the options."""
    missing = [f"--{k}" for k in ("model", "dataset") if getattr(args, k) is None]
    if missing:
        raise InvalidInput(f"{args.command} needs {', '.join(missing)}"
                           + (" (or --from CHECKPOINT of `miracle train`)" if args.command == "compress" else ""))
    config = CompressConfig.from_options(args.preset, **_explicit_options(args))
    if config.budget is None and config.index_budget is None:
        raise InvalidInput(f"{args.command} needs --budget (the file's size, e.g. 1.52KB) or --index-budget")
    return config, _model_from_options(args, config.seed)


def _posterior_summary(vmodel: VariationalModel, scores: dict, steps: int, train_seconds: float) -> dict:
    return {
        "param": vmodel.config.param,
        "test_accuracy": scores["test_accuracy_sample"],
        **scores,
        **vmodel.kl_summary(),
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "step_ms": round(1000 * train_seconds / max(steps, 1), 2),
    }


def cmd_train(args) -> dict | None:
    config, model = _new_run(args)
    threads.use_threads(args.threads)
    train_split = data_module.load(args.dataset, "train", args.data_dir)
    test_split = data_module.load(args.dataset, "test", args.data_dir)
    trainer = build_trainer(model, train_split, config, args.out, model_name=args.model, data_name=args.dataset,
                            device=args.device)
    with trainer.exclusive():
        trainer.run(progress=not args.quiet)
    if not distributed.is_main():
        return None
    summary = {
        "model": args.model, "dataset": args.dataset,
        **_posterior_summary(trainer.vmodel, evaluate_posterior(trainer.vmodel, test_split, config.seed),
                             config.steps, trainer.seconds),
        "seconds": round(trainer.seconds, 2),
        "checkpoint": str(Path(args.out) / "checkpoint.pt"),
        "config": config.to_dict(),
        **provenance(),
    }
    files.write_json(Path(args.out, "summary.json"), summary)
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


def _as_option(field: str, value) -> str:
    """A configuration field as the option that sets it."""
    if field == "group_sizes":
        return "--no-hashing"
    return f"--{field.replace('_', '-')} {value}"


def _from_checkpoint(args) -> tuple[CompressConfig, nn.Module, str]:
    """The configuration, model and dataset of the checkpoint ``--from`` names. Options that
    contradict it are refused; the coding options may be given."""
    state = load_checkpoint(args.from_checkpoint)
    identity = state["identity"]
    if "config" not in identity:
        raise InvalidInput(f"{args.from_checkpoint} was written by an older miracle; train it again")
    if state["step"] < identity["config"]["steps"]:
        raise InvalidInput(f"{args.from_checkpoint} stopped at step {state['step']} of {identity['config']['steps']}: "
                           "finish its training first (the command that made it resumes it), then compress")
    config = CompressConfig.from_dict(identity["config"]).replace(steps=state["step"])
    explicit = _explicit_options(args)
    given = {"model": args.model, "dataset": args.dataset,  # --include/--exclude come as lists
             **{k: tuple(v) if isinstance(v, list) else v for k, v in explicit.items() if k not in CODING_FIELDS}}
    # A checkpoint written through the Python API may name no model or dataset: the options name them.
    model, dataset = identity["model"] or args.model, identity["dataset"] or args.dataset
    if not dataset:
        raise InvalidInput(f"{args.from_checkpoint} does not name its dataset: pass --dataset")
    recorded = {"model": model, "dataset": dataset, **dataclasses.asdict(config)}
    clashes = [f"{_as_option(k, given[k])} (the checkpoint has {recorded[k]})"
               for k in given if given[k] is not None and given[k] != recorded[k]]
    if clashes:
        raise InvalidInput(f"{args.from_checkpoint} contradicts {'; '.join(clashes)}: leave these options out "
                           "(only the coding options may change after training)")
    config = config.replace(**{k: v for k, v in explicit.items() if k in CODING_FIELDS})
    if args.preset:
        config = config.replace(**{k: v for k, v in get_preset(args.preset).items()
                                   if k in CODING_FIELDS and k not in explicit})
    if not is_registered(identity["model"]) and args.model is None:
        raise InvalidInput(f"{args.from_checkpoint} is a checkpoint of your own model {identity['model'] or ''}: "
                           "pass --model package.module:ClassName (and --model-args)")
    args.model = model
    return config, _model_from_options(args, config.seed), dataset


def cmd_compress(args) -> dict | None:
    if args.from_checkpoint is None:
        (config, model), dataset = _new_run(args), args.dataset
    else:
        if args.init_from:
            raise InvalidInput("--init-from starts a new training; --from continues a trained one: give one")
        config, model, dataset = _from_checkpoint(args)
    train_split = data_module.load(dataset, "train", args.data_dir)
    test_split = data_module.load(dataset, "test", args.data_dir)
    work = Path(args.work_dir) if args.work_dir else work_dir_for(args.output)
    result = compress(model, train_split, out=args.output, config=config, test_data=test_split,
                      device=args.device, model_name=args.model, data_name=dataset, work_dir=work,
                      start_from=args.from_checkpoint, threads=args.threads, progress=not args.quiet)
    if not distributed.is_main():
        return None
    # The figures of the file come from the file, decoded as a receiver would.
    decoded = decompress(args.output, model if not is_registered(args.model) else None)
    test_accuracy = accuracy(decoded, test_split)
    float32_bytes = 4 * sum(p.numel() for p in decoded.parameters())
    index_bytes = packed_size(result.num_blocks, result.bits_per_block)
    summary = {
        "output": str(args.output),
        "model": args.model,
        "dataset": dataset,
        "size_bytes": result.size_bytes,
        "ratio": round(float32_bytes / result.size_bytes, 1),
        "test_error": round(1 - test_accuracy, 6),
        "test_accuracy": test_accuracy,
        "index_bits": result.index_bits,
        "index_bytes": index_bytes,
        "side_bytes": result.size_bytes - index_bytes,
        "uncoded_bytes": result.uncoded_bytes,
        "budget": dataclasses.asdict(config.budget_spec),
        "blocks": result.num_blocks,
        "bits_per_block": result.bits_per_block,
        # Training alone (the trainer's clock goes on through the retraining while coding).
        "before_coding": (_posterior_summary(result.vmodel, result.before_coding, config.steps, result.train_seconds)
                          if result.before_coding else None),
        "preset": args.preset,
        "config": config.to_dict(),
        "coding": config.coding().to_dict(),
        "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
        "seconds": round(result.seconds, 2),
        "coding_seconds": round(result.coding_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "miracle_published": MIRACLE_LENET5_MNIST,
        **provenance(),
    }
    files.write_json(work / "summary.json", summary)
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
        f"wall time: {s['seconds']:.0f} s ({s['threads']} thread{'s' if s['threads'] != 1 else ''}"
        + (f" in each of {s['processes']} processes)" if s["processes"] > 1 else ")")
    )
    if s["uncoded_bytes"]:
        print(f"not coded, as float32: {len(s['uncoded_bytes'])} tensors, {sum(s['uncoded_bytes'].values())} bytes "
              f"({', '.join(s['uncoded_bytes'])})")
    if (s["model"], s["dataset"]) in (("lenet5", "mnist"), ("lenet5-relu", "mnist")):
        points = ", ".join(f"{100 * p['test_error']:.2f}% at {p['size_bytes']:,} bytes" for p in MIRACLE_LENET5_MNIST)
        print(f"MIRACLE (published, LeNet-5 on MNIST, index bytes alone): {points}")


def _receiver_model(args) -> nn.Module | None:
    """The model ``--model`` names for a file of a user's own class (the file's own name else)."""
    return _model_from_options(args, seed=0) if args.model else None


def cmd_decompress(args) -> dict:
    check_writable(args.output)
    model = decompress(args.file, _receiver_model(args))
    out = Path(args.output)
    # The default layout, whatever the model trains in: what other tools (safetensors,
    # parameters_to_vector) expect.
    files.save_torch({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, out)
    return {"output": str(out), "model": read_mrc(args.file).model_name,
            "parameters": sum(p.numel() for p in model.parameters())}


def cmd_evaluate(args) -> dict:
    model = decompress(args.file, _receiver_model(args))
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
    from .study import (check_config, check_data, open_preset, part_name, prepare_study, pyplot, run_study,
                        write_index, write_report)
    from .study import get_preset as get_study_preset  # not the schedules' get_preset

    overrides = {k: v for k, v in (("budget", args.budget), ("seeds", args.seeds)) if v is not None}
    parts = tuple(dataclasses.replace(part, **overrides) for part in get_study_preset(args.preset))
    names = [part_name(part) for part in parts]
    unknown = set(args.part or ()) - set(names)
    if unknown:
        raise InvalidInput(f"preset {args.preset} has no part {', '.join(sorted(unknown))}; its parts: {', '.join(names)}")
    if args.jobs < 1:
        raise InvalidInput("--jobs must be at least 1")
    selected = {name: part for part, name in zip(parts, names) if not args.part or name in args.part}
    # Every refusal before the first part runs for hours: settings and data before any folder,
    # then each part's folder; the plots, drawn last, need matplotlib.
    for part in parts:
        check_config(part)
    for part in selected.values():
        check_data(part, args.data_dir)
    pyplot()
    out = Path(args.out)
    open_preset(out, args.preset, parts)
    for name, part in selected.items():
        prepare_study(part, out / name, args.preset, args.data_dir)
    log = (lambda msg: None) if args.json else print
    done, seconds = {}, 0.0
    for name, part in selected.items():
        summary = run_study(part, out / name, args.preset, args.data_dir, args.jobs, log)
        write_report(out / name / "json", out / name)
        done[name] = {"mean_var_chosen": summary["mean_var_chosen"]}
        seconds += summary["seconds_this_invocation"]
    finished = [out / name for name in names if (out / name / "json" / "verdicts.json").exists()]
    report = write_index(out, args.preset, finished)
    return {"report": str(report), "parts": done, "seconds_this_invocation": round(seconds, 1)}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other user error, instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="miracle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a variational posterior within a budget")
    _model_options(train, training=True)
    train.add_argument("--dataset", default=None, choices=tuple(data_module.DATASETS))
    _config_options(train, coding=False)
    _data_dir_option(train)
    _threads_option(train)
    train.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, summary.json")
    _output_options(train)
    train.set_defaults(func=cmd_train, printer=print_train_summary)

    compress = sub.add_parser("compress", help="train and code a model into a .mrc file")
    _model_options(compress, training=True)
    compress.add_argument("--dataset", default=None, choices=tuple(data_module.DATASETS))
    _config_options(compress, coding=True)
    _data_dir_option(compress)
    _threads_option(compress)
    compress.add_argument("-o", "--output", required=True, help="the .mrc file to write")
    compress.add_argument("--from", dest="from_checkpoint", default=None,
                          help="code a model trained by `miracle train` (its checkpoint.pt)")
    compress.add_argument("--work-dir", default=None,
                          help="checkpoint, metrics and summary of the run (default: OUTPUT.work)")
    _output_options(compress)
    compress.set_defaults(func=cmd_compress, printer=print_compress_summary)

    decompress_p = sub.add_parser("decompress", help="turn a .mrc file into a PyTorch state_dict file")
    decompress_p.add_argument("file")
    decompress_p.add_argument("-o", "--output", required=True)
    _model_options(decompress_p, training=False)
    decompress_p.add_argument("--json", action="store_true")
    decompress_p.set_defaults(func=cmd_decompress, printer=lambda s: print(f"wrote {s['output']} ({s['model']})"))

    evaluate = sub.add_parser("evaluate", help="test error of the network in a .mrc file")
    evaluate.add_argument("file")
    evaluate.add_argument("--dataset", required=True, choices=tuple(data_module.DATASETS))
    _model_options(evaluate, training=False)
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
    study.add_argument("--preset", required=True,
                       help="quick (minutes); full (LeNet-5 on MNIST and Fashion-MNIST, LeNet-300-100 on MNIST, "
                            "four budgets; hours); main (full at its main budget alone)")
    study.add_argument("--out", required=True, help="study folder; the same command again resumes it")
    study.add_argument("--budget", default=None, help="file budget of every part's main comparison (default: the preset's)")
    study.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    study.add_argument("--part", action="append", metavar="MODEL-DATASET",
                       help="run only this part of the preset (repeat for several; default: all)")
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


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (from `kill`, a batch scheduler, torchrun) stops a command as Ctrl-C does: the
    work saved so far stays, a study logs its wall time, and the same command resumes. Python's
    default would end the process on the spot. (A job started in the background by a script
    ignores Ctrl-C's SIGINT, so SIGTERM is how one stops it.)"""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            result = args.func(args)
    except MiracleError as exc:
        print(f"miracle: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("miracle: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if result is None:  # a process of several other than rank 0: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        args.printer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
