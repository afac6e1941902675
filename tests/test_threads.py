"""The thread count: chosen from the idle cores when a run starts, kept by its checkpoint."""

import os
import subprocess
import sys
import time

import pytest
import torch

from miracle import threads
from miracle.data import Split
from miracle.errors import InvalidInput
from miracle.models import create_model, get_model_spec
from miracle.training import TrainConfig, Trainer
from miracle.variational import VariationalConfig, VariationalModel


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-2", "many", 0])
def test_a_bad_thread_count_is_refused(value):
    with pytest.raises(InvalidInput, match="--threads must be a positive number or auto"):
        threads.parse_threads(value)


def test_a_given_count_is_used_and_none_leaves_torch_alone(restore_threads):
    assert threads.use_threads("1") == 1 == torch.get_num_threads()
    assert threads.use_threads(None) == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a second core to keep busy")
def test_a_core_kept_busy_by_another_process_is_not_counted_idle():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        idle = threads.idle_cores()
    finally:
        busy.kill()
        busy.wait()
    assert 1 <= idle <= min(threads.available_cores(), os.cpu_count() - 1)


def test_a_resumed_run_computes_with_the_thread_count_it_began_with(mnist_train, tmp_path, restore_threads):
    small = Split(mnist_train.images[:400], mnist_train.labels[:400])

    def trainer():
        config = VariationalConfig(budget_bits=4000, group_sizes=get_model_spec("lenet5").group_sizes)
        return Trainer(VariationalModel(create_model("lenet5"), config), small,
                       TrainConfig(steps=4, batch_size=20, checkpoint_every=2), tmp_path)

    torch.set_num_threads(1)
    first = trainer()
    first.start()
    first.train_until(2, progress=False)  # checkpoint at step 2, written with one thread
    torch.set_num_threads(2)
    trainer().run(progress=False)
    assert torch.get_num_threads() == 1
