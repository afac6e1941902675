import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import miracle
from miracle import files
from miracle.compress import FingerprintMismatch
from miracle.data import Split
from miracle.errors import MiracleError
from miracle.progressive import CodingConfig
from miracle.training import DEFAULT_RETRAIN_LR, TrainConfig

from conftest import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


class Tiny(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.norm = nn.BatchNorm1d(hidden)  # not coded: travels as float32 side information
        self.fc1 = nn.Linear(4 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


@pytest.fixture(scope="module")
def small_train(mnist_train):
    return Split(mnist_train.images[:5000], mnist_train.labels[:5000])


def _compress_tiny(tmp_path, data, **options):
    torch.manual_seed(0)  # the model's own default initialisation only
    settings = dict(budget=None, index_budget="0.25KB", bits_per_block=10, group_sizes={"fc1.weight": 4}, steps=150,
                    batch_size=64, blocks_per_group=40, retrain_steps=10, progress=False)
    settings.update(options)
    return miracle.compress(Tiny(), data, out=tmp_path / "tiny.mrc", **settings)


def test_round_trip_through_the_file_is_bit_identical(tmp_path, small_train, mnist_test):
    result = _compress_tiny(tmp_path, small_train)
    encoded = result.decoded_model().eval()
    restored = miracle.decompress(tmp_path / "tiny.mrc", model=Tiny()).eval()
    for (name, a), (_, b) in zip(encoded.state_dict().items(), restored.state_dict().items()):
        if a.is_floating_point():
            assert torch.equal(a, b), name
    assert miracle.accuracy(restored, mnist_test) == miracle.accuracy(encoded, mnist_test) > 0.5
    assert result.size_bytes == os.path.getsize(tmp_path / "tiny.mrc")
    assert result.index_bits == 2000 and result.num_blocks == 200


def test_the_file_refuses_another_architecture(tmp_path, small_train):
    _compress_tiny(tmp_path, small_train, steps=5, retrain_steps=1)
    with pytest.raises(FingerprintMismatch, match="another architecture"):
        miracle.decompress(tmp_path / "tiny.mrc", model=Tiny(hidden=17))
    with pytest.raises(MiracleError, match="user-defined model"):
        miracle.decompress(tmp_path / "tiny.mrc")


def test_mean_var_pipeline_and_ordered_rule(tmp_path, small_train):
    result = _compress_tiny(tmp_path, small_train, param="mean-var", rule="ordered", steps=20)
    restored = miracle.decompress(tmp_path / "tiny.mrc", model=Tiny())
    assert torch.equal(restored.fc1.weight, result.decoded_model().fc1.weight)


@pytest.mark.parametrize("retrain_lr, expected", [(None, DEFAULT_RETRAIN_LR["mean-kl"]), (0.0042, 0.0042)])
def test_retraining_runs_at_its_own_learning_rate(tmp_path, small_train, retrain_lr, expected):
    _compress_tiny(tmp_path, small_train, steps=20, retrain_steps=3, retrain_lr=retrain_lr)
    records = [json.loads(line) for line in (tmp_path / "tiny.mrc.work" / "metrics.jsonl").read_text().splitlines()]
    training, retraining = records[:20], records[20:]
    assert len(retraining) == 3 * 4  # 200 blocks in groups of 40: retraining after each of the first 4
    assert all(r["lr"] == expected and r["blocks_coded"] > 0 for r in retraining)
    schedule = TrainConfig(steps=20)  # the training before coding keeps its own schedule
    assert [r["lr"] for r in training] == [schedule.learning_rate("mean-kl", step) for step in range(20)]
    assert all(r["blocks_coded"] == 0 for r in training)


def test_cosine_retraining_decays_over_the_whole_coding(tmp_path, small_train):
    _compress_tiny(tmp_path, small_train, steps=20, retrain_steps=3, retrain_lr=0.02, retrain_lr_schedule="cosine")
    records = [json.loads(line) for line in (tmp_path / "tiny.mrc.work" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["lr"] for r in records[20:]]
    assert len(rates) == 3 * 4
    assert rates[0] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(rates, rates[1:]))  # one decay through every group, not one per group
    assert rates[-1] == pytest.approx(0.02 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 11 / 12))))


def test_the_readme_example_runs(tmp_path, mnist_root, monkeypatch):
    code = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIRACLE_DATA", str(mnist_root))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "tiny.mrc").stat().st_size == namespace["result"].size_bytes
    restored, decoded = namespace["restored"], namespace["result"].decoded_model()
    assert all(torch.equal(a, b) for a, b in zip(restored.parameters(), decoded.parameters()))

    # The second example goes on from the first: a user's trained weights, DataLoader and loss.
    own = re.search(r"<!-- readme-example-own -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(own, "README.md", "exec"), namespace)
    result = namespace["mine_result"]
    assert (tmp_path / "mine.mrc").stat().st_size == result.size_bytes <= 400
    assert miracle.accuracy(miracle.decompress(tmp_path / "mine.mrc", model=namespace["TinyNet"]()),
                            namespace["test"]) > 0.8


CLI_RUN = ["compress", "--model", "lenet300", "--dataset", "mnist", "--index-budget", "100B", "--bits-per-block", "8",
           "--steps", "150", "--batch-size", "32", "--blocks-per-group", "5", "--retrain-steps", "15", "--quiet",
           "--threads", "2"]  # fixed: "auto" could choose differently for the two runs on a loaded machine


def test_a_killed_compress_resumes_to_the_same_file(tmp_path, mnist_root):
    env = {"MIRACLE_DATA": str(mnist_root)}
    assert run_cli(*CLI_RUN, "-o", str(tmp_path / "whole.mrc"), env=env).returncode == 0

    killed = tmp_path / "killed.mrc"
    metrics = tmp_path / "killed.mrc.work" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "miracle", *CLI_RUN, "-o", str(killed)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # kill once coding is under way (some blocks coded, some retraining written)
        if metrics.exists() and '"blocks_coded": 10' in metrics.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()

    again = run_cli(*CLI_RUN, "-o", str(killed), env=env)
    assert again.returncode == 0, again.stderr
    assert killed.read_bytes() == (tmp_path / "whole.mrc").read_bytes()


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp: ["compress", "--model", "lenet5", "--dataset", "mnist", "--index-budget", "1B", "-o",
                  str(tmp / "x.mrc")], "smaller than one block"),
    (lambda tmp: ["compress", "--model", "lenet5-relu", "--dataset", "mnist", "--budget", "60B", "-o",
                  str(tmp / "x.mrc")], "give --budget 87B or more"),
    (lambda tmp: ["compress", "--model", "lenet5-relu", "--dataset", "mnist", "--budget", "1.5KB", "--index-budget",
                  "1.5KB", "-o", str(tmp / "x.mrc")], "the budget is given twice"),
    (lambda tmp: ["compress", "--model", "lenet5", "--dataset", "mnist", "--budget", "1KB", "-o",
                  str(tmp / "no" / "such" / "dir" / "x.mrc")], "cannot write the output file"),
    (lambda tmp: ["compress", "--from", str(tmp / "missing.pt"), "-o", str(tmp / "x.mrc")], "no such checkpoint"),
    (lambda tmp: ["compress", "--model", "lenet5", "--dataset", "mnist", "--budget", "1KB", "--retrain-lr", "-1",
                  "-o", str(tmp / "x.mrc")], "retraining learning rate must be a positive number"),
    (lambda tmp: ["compress", "--model", "lenet5-relu", "--dataset", "mnist", "--budget", "1.52KB", "--preset",
                  "nonsense", "-o", str(tmp / "x.mrc")], "unknown preset 'nonsense'; choose one of demo, fast"),
    (lambda tmp: ["evaluate", str(tmp / "missing.mrc"), "--dataset", "mnist"], "no such .mrc file"),
    (lambda tmp: ["inspect", str(README)], "not a miracle .mrc file"),
    (lambda tmp: ["decompress", str(README), "-o", str(tmp / "x.pt")], "not a miracle .mrc file"),
])
def test_cli_bad_input(tmp_path, mnist_root, make_args, message):
    result = run_cli(*make_args(tmp_path), env={"MIRACLE_DATA": str(mnist_root)})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.mrc").exists() and not (tmp_path / "x.pt").exists()


def test_from_checkpoint_refuses_what_contradicts_it_and_takes_coding_options(tmp_path, mnist_root):
    env = {"MIRACLE_DATA": str(mnist_root)}
    trained = run_cli("train", "--model", "lenet300", "--dataset", "mnist", "--index-budget", "100B", "--bits-per-block",
                      "8", "--steps", "3", "--quiet", "--out", str(tmp_path / "run"), env=env)
    assert trained.returncode == 0, trained.stderr
    for option, clash in ((["--model", "lenet5"], "--model lenet5 (the checkpoint has lenet300)"),
                          (["--lr", "0.5"], "--lr 0.5 (the checkpoint has None)"),
                          (["--steps", "9"], "--steps 9 (the checkpoint has 3)")):
        result = run_cli("compress", "--from", str(tmp_path / "run" / "checkpoint.pt"), *option,
                         "-o", str(tmp_path / "x.mrc"), env=env)
        assert result.returncode == 2 and clash in result.stderr and "leave these options out" in result.stderr
        assert not (tmp_path / "x.mrc").exists()
    coded = run_cli("compress", "--from", str(tmp_path / "run" / "checkpoint.pt"), "--retrain-steps", "1",
                    "--blocks-per-group", "50", "-o", str(tmp_path / "x.mrc"), "--json", "--quiet", env=env)
    assert coded.returncode == 0, coded.stderr
    summary = json.loads(coded.stdout)
    assert summary["coding"]["retrain_steps"] == 1 and summary["coding"]["blocks_per_group"] == 50
    assert summary["config"]["steps"] == 3 and summary["before_coding"]["steps"] == 3
    evaluated = run_cli("evaluate", str(tmp_path / "x.mrc"), "--dataset", "mnist", "--json", env=env)
    assert '"model": "lenet300"' in evaluated.stdout and '"size_bytes"' in evaluated.stdout


def test_from_checkpoint_refuses_unfinished_training_and_names_an_unnamed_model(tmp_path, mnist_root):
    env = {"MIRACLE_DATA": str(mnist_root)}
    trained = run_cli("train", "--model", "lenet300", "--dataset", "mnist", "--index-budget", "100B", "--bits-per-block",
                      "8", "--steps", "3", "--quiet", "--out", str(tmp_path / "run"), env=env)
    assert trained.returncode == 0, trained.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    files.save_torch({**state, "step": 2}, tmp_path / "unfinished.pt")  # as a `miracle train` killed at step 2 leaves it
    result = run_cli("compress", "--from", str(tmp_path / "unfinished.pt"), "-o", str(tmp_path / "x.mrc"), env=env)
    assert result.returncode == 2 and "stopped at step 2 of 3" in result.stderr and not (tmp_path / "x.mrc").exists()
    identity = state["identity"]  # as if trained with hashing
    hashed = {**identity, "config": {**identity["config"], "group_sizes": {"fc1.weight": 2}}}
    files.save_torch({**state, "identity": hashed}, tmp_path / "hashed.pt")
    clash = run_cli("compress", "--from", str(tmp_path / "hashed.pt"), "--no-hashing", "-o", str(tmp_path / "x.mrc"),
                    env=env)
    assert clash.returncode == 2 and "--no-hashing (the checkpoint has {" in clash.stderr
    # Written through the Python API, a checkpoint may name no model or dataset: the options name them.
    files.save_torch({**state, "identity": {**identity, "model": "", "dataset": ""}}, tmp_path / "unnamed.pt")
    unnamed = run_cli("compress", "--from", str(tmp_path / "unnamed.pt"), "--model", "lenet300",
                      "-o", str(tmp_path / "x.mrc"), env=env)
    assert unnamed.returncode == 2 and "does not name its dataset: pass --dataset" in unnamed.stderr
    coded = run_cli("compress", "--from", str(tmp_path / "unnamed.pt"), "--model", "lenet300", "--dataset", "mnist",
                    "--retrain-steps", "1", "-o", str(tmp_path / "x.mrc"), "--json", "--quiet", env=env)
    assert coded.returncode == 0, coded.stderr
    assert (json.loads(coded.stdout)["model"], json.loads(coded.stdout)["dataset"]) == ("lenet300", "mnist")


def test_a_preset_sets_the_schedule_and_explicit_options_win(tmp_path, mnist_root):
    result = run_cli("compress", "--model", "lenet300", "--dataset", "mnist", "--index-budget", "100B",
                     "--bits-per-block", "8", "--preset", "demo", "--steps", "3", "--kl-anneal-steps", "0",
                     "--retrain-steps", "1", "-o", str(tmp_path / "x.mrc"), "--json", "--quiet",
                     env={"MIRACLE_DATA": str(mnist_root)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    demo = miracle.PRESETS["demo"]
    assert summary["before_coding"]["steps"] == 3 and summary["coding"]["retrain_steps"] == 1
    assert summary["coding"]["blocks_per_group"] == demo["blocks_per_group"] != CodingConfig.blocks_per_group
    assert summary["preset"] == "demo"
