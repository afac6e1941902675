"""Data-parallel training under torchrun: two CPU processes with gloo."""

import os
import subprocess
import sys
from pathlib import Path

import torch

import miracle

from own_models import Regressor

TESTS = Path(__file__).resolve().parent


def _torchrun(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(TESTS / "distributed_run.py"), *args], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_write_one_file_that_decodes_to_what_rank_0_holds_and_resume_to_the_same(tmp_path):
    _torchrun(str(tmp_path / "a"))
    decoded = [torch.load(tmp_path / "a" / f"decoded-rank{r}.pt") for r in (0, 1)]
    posterior = [torch.load(tmp_path / "a" / f"posterior-rank{r}.pt") for r in (0, 1)]
    for name in posterior[0]:  # every rank holds the same posterior, coded the same way
        assert torch.equal(posterior[0][name], posterior[1][name]), name
    restored = miracle.decompress(tmp_path / "a" / "run.mrc", Regressor()).state_dict()
    for name, value in decoded[0].items():
        assert torch.equal(restored[name], value) and torch.equal(decoded[1][name], value), name
    assert (tmp_path / "a" / "run.mrc.work" / "checkpoint.pt").exists()

    # Killed at step 25 (the checkpoint of step 20 survives), then run again: the same file.
    _torchrun(str(tmp_path / "b"), "25")
    assert not (tmp_path / "b" / "run.mrc").exists()
    _torchrun(str(tmp_path / "b"))
    assert (tmp_path / "b" / "run.mrc").read_bytes() == (tmp_path / "a" / "run.mrc").read_bytes()
