import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import miracle
from conftest import run_cli

RESULTS = Path(__file__).resolve().parents[1] / "results"

BASE = ["train", "--model", "lenet5", "--dataset", "mnist", "--index-budget", "1.5KB", "--steps", "2", "--quiet"]


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize(
    "args, message",
    [
        (_replace(BASE, "--model", "vgg99"), "unknown model 'vgg99'"),
        (_replace(BASE, "--dataset", "cifar"), "invalid choice: 'cifar'"),
        (_replace(BASE, "--index-budget", "1B"), "smaller than one block"),
        (_replace(BASE, "--index-budget", "lots"), "cannot read the budget"),
        (BASE + ["--bits-per-block", "25"], "between 1 and 24"),
        (BASE + ["--bits-per-block", "0"], "between 1 and 24"),
        (BASE + ["--param", "nonsense"], "invalid choice: 'nonsense'"),
        (BASE + ["--lr", "1e12", "--param", "mean-var", "--steps", "50"], "diverged"),
        (BASE + ["--lr", "-1"], "learning rate"),
        (BASE + ["--kl-bits", "30"], "must be in (0, 16], the bits per block"),
        (BASE + ["--weight-samples", "0"], "weight samples per step must be between 1 and the batch size"),
        (BASE + ["--kl-anneal-from", "0.5", "--kl-anneal-steps", "1"], "KL annealing must start"),
        (BASE + ["--rule", "greedy"], "unrecognized arguments: --rule"),
        (["compress", *BASE[1:], "--rule", "nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, tmp_path, mnist_root):
    result = run_cli(*args, "--out", str(tmp_path / "run"), env={"MIRACLE_DATA": str(mnist_root)})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, f"not one line: {result.stderr!r}"


def test_missing_data_names_the_fetch_command(tmp_path):
    result = run_cli(*BASE, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "miracle data fetch" in result.stderr and "Traceback" not in result.stderr


def test_train_prints_the_json_summary(tmp_path, mnist_root):
    result = run_cli(*_replace(BASE, "--steps", "5"), "--json", "--out", str(tmp_path / "run"),
                     env={"MIRACLE_DATA": str(mnist_root)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("test_accuracy", "kl_bits_total", "kl_bits_per_block_min", "kl_bits_per_block_max", "blocks",
                "bits_per_block", "steps", "seconds"):
        assert key in summary
    assert summary["blocks"] == 750 and summary["bits_per_block"] == 16 and summary["steps"] == 5
    assert abs(summary["kl_bits_total"] - 12000) < 0.75
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, mnist_root):
    from miracle import files

    with files.exclusive(tmp_path / "run"):  # stands for a run in progress in this process
        result = run_cli(*BASE, "--out", str(tmp_path / "run"), env={"MIRACLE_DATA": str(mnist_root)})
    assert result.returncode == 2
    assert f"another miracle run (process {os.getpid()}) is using" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_full_disk_at_a_checkpoint_is_one_line_keeping_the_last_good_one(tmp_path, mnist_root, monkeypatch,
                                                                            capsys):
    from miracle import cli
    from miracle.training import Trainer, load_checkpoint

    saves = []
    save = Trainer.save_checkpoint

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_until_the_disk_fills(self):
        saves.append(self.step)
        if len(saves) == 2:
            monkeypatch.setattr(os, "fsync", full)
        return save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_until_the_disk_fills)
    monkeypatch.setenv("MIRACLE_DATA", str(mnist_root))
    run = tmp_path / "run"
    status = cli.main(["train", *_replace(BASE, "--steps", "4")[1:], "--checkpoint-every", "2", "--out", str(run)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1 and f"cannot write {run / 'checkpoint.pt'}: no space left on the device" in error
    assert load_checkpoint(run / "checkpoint.pt")["step"] == saves[0] == 2
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_decompress_writes_the_decoded_weights_in_the_default_layout(tmp_path):
    mrc = RESULTS / "lenet5-relu-mnist-mean-kl.mrc"
    result = run_cli("decompress", str(mrc), "-o", str(tmp_path / "weights.pt"))
    assert result.returncode == 0, result.stderr
    written = torch.load(tmp_path / "weights.pt", weights_only=True)
    decoded = miracle.decompress(mrc).state_dict()
    assert decoded["conv2.weight"].is_contiguous(memory_format=torch.channels_last)  # as LeNet-5 trains
    assert all(tensor.is_contiguous() for tensor in written.values())  # as other tools expect
    assert all(torch.equal(written[name], decoded[name]) for name in decoded)


def test_sigterm_stops_a_command_as_an_interrupt_does_keeping_its_checkpoint(tmp_path, mnist_root):
    out = tmp_path / "run"
    args = _replace(BASE, "--steps", "100000") + ["--checkpoint-every", "5", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "miracle", *args], env={**os.environ, "MIRACLE_DATA": str(mnist_root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr == "miracle: interrupted; run the same command again to resume\n"
    assert (out / "checkpoint.pt").exists()
