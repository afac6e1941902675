import os

import pytest
import torch

from miracle.provenance import machine, provenance


def test_the_machine_names_what_decides_a_runs_floating_point_path():
    mine = torch.get_num_threads()
    other = 2 if mine == 1 else 1
    torch.set_num_threads(other)
    try:
        described = machine()
    finally:
        torch.set_num_threads(mine)
    assert f", {other} threads," in described
    assert f", {torch.backends.cpu.get_cpu_capability()} kernels," in described
    assert described.endswith(f"torch {torch.__version__}")
    assert provenance()["machine"] == machine()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the processor's name from /proc/cpuinfo")
def test_the_machine_names_its_processor():
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    if not names:
        pytest.skip("this machine's /proc/cpuinfo names no processor")
    assert f", {names[0]}," in machine()
