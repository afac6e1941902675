"""One configuration: the command line's options are its fields, and it validates itself."""

import argparse

import pytest

from miracle.cli import build_parser
from miracle.config import CODING_FIELDS, CONFIG_FIELDS, CompressConfig
from miracle.errors import InvalidInput


def _subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _configuration_options(command: str) -> set[str]:
    # The options that feed the configuration are those that stay unset when not given.
    return {a.dest for a in _subcommand(command)._actions if a.default is argparse.SUPPRESS and a.dest != "help"}


def test_compress_has_an_option_for_every_field_and_train_for_every_field_but_coding():
    assert _configuration_options("compress") == set(CONFIG_FIELDS)
    assert _configuration_options("train") == set(CONFIG_FIELDS) - set(CODING_FIELDS)


def test_every_option_reaches_its_field():
    values = {"budget": "2KB", "param": "mean-var", "bits_per_block": "12", "include": "fc*", "exclude": "fc3*",
              "kl_bits": "11.5", "mean_kl_form": "bounded-mean", "mean_share": "0.6", "beta_initial": "0.5", "eps_beta": "0.01",
              "steps": "77", "batch_size": "64", "lr": "0.003", "lr_schedule": "constant", "weight_samples": "2",
              "kl_anneal_from": "4", "kl_anneal_steps": "10", "random_shift_px": "2", "precision": "bfloat16",
              "checkpoint_every": "5", "blocks_per_group": "3",
              "retrain_steps": "4", "retrain_lr": "0.002", "retrain_lr_schedule": "cosine", "rule": "ordered",
              "seed": "9"}
    argv = ["compress", "-o", "x.mrc", "--no-hashing"]
    for name, value in values.items():
        argv += [f"--{name.replace('_', '-')}", value]
    args = build_parser().parse_args(argv)
    explicit = {name: getattr(args, name) for name in CONFIG_FIELDS if hasattr(args, name)}
    config = CompressConfig.from_options(**explicit)
    assert set(explicit) == set(CONFIG_FIELDS) - {"index_budget"}
    assert config.group_sizes == {} and config.include == ("fc*",) and config.exclude == ("fc3*",)
    for name, value in values.items():
        if name not in ("include", "exclude"):
            assert str(getattr(config, name)) == str(type(getattr(config, name))(value)), name


def test_the_configuration_round_trips_through_its_dict():
    config = CompressConfig(budget="1.52KB", include=["fc1.weight"], group_sizes={"fc1.weight": 4}, seed=3)
    assert CompressConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("options, message", [
    (dict(budget="1KB", index_budget="1KB"), "the budget is given twice"),
    (dict(steps=0), "at least 1"),
    (dict(lr=-1.0), "the learning rate"),
    (dict(param="mean-std"), "unknown parameterisation"),
    (dict(rule="best"), "rule"),
    (dict(lr_schedule="linear"), "learning-rate schedule"),
    (dict(precision="float16"), "unknown precision 'float16'"),
    (dict(stepz=3), "unknown option(s) stepz"),
    (dict(mean_share=1.0), "mean_share"),
    (dict(checkpoint_every=0), "checkpoint_every"),
    (dict(eps_beta=-1.0), "annealing rate (eps_beta) must be 0 or more"),
    (dict(beta_initial=0.0), "initial beta (beta_initial) must be a positive number"),
    (dict(beta_initial=float("nan")), "initial beta"),
    (dict(seed=-1), "seed must be 0 or more"),
])
def test_bad_settings_are_refused_where_they_are_validated(options, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        CompressConfig.from_options(**options)
