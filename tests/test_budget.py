"""The budget is the file's size: the written file is at most the budget and within one block."""

import re

import pytest
import torch
from torch import nn

import miracle
from miracle.budget import Budget
from miracle.compress import index_bits_for
from miracle.data import Split
from miracle.errors import InvalidInput
from miracle.fileformat import byte_breakdown
from miracle.models import create_model, get_model_spec


class WithBatchNorm(nn.Module):
    """A user's model whose BatchNorm travels uncoded (its statistics are side information)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, stride=2)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 12 * 12, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def _registered(name):
    return create_model(name), get_model_spec(name).group_sizes, name


@pytest.mark.parametrize("make, budget, bits_per_block", [
    (lambda: _registered("lenet5-relu"), "1.52KB", 16),
    (lambda: _registered("lenet300"), "1KB", 16),
    (lambda: (WithBatchNorm(), {"fc.weight": 4}, ""), "0.4KB", 10),
])
def test_the_file_is_at_most_the_budget_and_within_one_block(tmp_path, mnist_train, make, budget, bits_per_block):
    model, group_sizes, name = make()
    data = Split(mnist_train.images[:512], mnist_train.labels[:512])
    result = miracle.compress(model, data, budget, tmp_path / "m.mrc", bits_per_block=bits_per_block,
                              group_sizes=group_sizes, model_name=name, steps=2, batch_size=64,
                              blocks_per_group=10_000, retrain_steps=0, progress=False)
    budget_bytes = Budget.from_options(budget).bits // 8
    size = (tmp_path / "m.mrc").stat().st_size
    assert size == result.size_bytes <= budget_bytes
    # One more block would not have fitted: it adds bits_per_block bits, so at least one byte.
    assert budget_bytes - size < bits_per_block / 8 + 1
    breakdown = byte_breakdown((tmp_path / "m.mrc").read_bytes())
    assert breakdown["index_bytes"] == (result.index_bits + 7) // 8
    if isinstance(model, WithBatchNorm):  # running mean and variance, weight and bias: 4 x 8 floats
        assert breakdown["side_info_bytes"] > 4 * 8 * 4


def test_the_index_budget_counts_the_indices_alone():
    model, group_sizes, name = _registered("lenet5-relu")
    bits = index_bits_for(Budget.from_options(index_budget="1.5KB"), model, bits_per_block=16,
                          group_sizes=group_sizes, model_name=name)
    assert bits == 12000
    # MIRACLE's published 1.52 KB of indices is 608 blocks of 20 bits.
    assert index_bits_for(Budget.from_options(index_budget="1.52KB"), model, bits_per_block=20,
                          group_sizes=group_sizes, model_name=name) == 608 * 20


def test_a_budget_below_the_side_information_names_the_smallest_possible_budget():
    model, group_sizes, name = _registered("lenet5-relu")
    with pytest.raises(InvalidInput, match=r"give --budget (\d+)B or more") as error:
        index_bits_for(Budget.from_options("60B"), model, bits_per_block=16, group_sizes=group_sizes, model_name=name)
    smallest = int(re.search(r"give --budget (\d+)B", str(error.value)).group(1))
    # ... and that budget is exactly enough for one block.
    assert index_bits_for(Budget.from_options(f"{smallest}B"), model, bits_per_block=16,
                          group_sizes=group_sizes, model_name=name) == 16
    with pytest.raises(InvalidInput):
        index_bits_for(Budget.from_options(f"{smallest - 1}B"), model, bits_per_block=16,
                       group_sizes=group_sizes, model_name=name)


def test_a_longer_model_name_leaves_fewer_index_bits():
    model, group_sizes, _ = _registered("lenet5-relu")
    short, long = (index_bits_for(Budget.from_options("1.52KB"), model, bits_per_block=16,
                                  group_sizes=group_sizes, model_name=name) for name in ("", "x" * 40))
    assert long == short - 20 * 16  # 40 more bytes of name: 20 fewer blocks of 2 bytes


def test_the_budget_is_given_in_one_way():
    with pytest.raises(InvalidInput, match="given twice"):
        Budget.from_options("1KB", "1KB")
    with pytest.raises(InvalidInput, match="no budget"):
        Budget.from_options()
