import platform
import resource

import pytest
import torch

from miracle import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_buffers_freed_by_one_step_serve_the_next_without_page_faults():
    assert memory.keep_freed_memory()
    size = 6 * 2**20 // 4  # a LeNet-5 activation's gradient at batch 128: 6 MB
    torch.ones(size).sum()  # the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(size).sum()  # freed at once, as a step's buffers are
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Handed back to the system and touched anew, each would fault 1,536 pages.
    assert faults < 200
