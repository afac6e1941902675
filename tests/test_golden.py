"""Published files keep decoding to the same weights; the layout and the encoder keep their choices.

A failure here means a change would make a file already in someone's hands decode differently:
make it a new version instead (docs/format.md), or, if a committed file was replaced on purpose,
rewrite the table with ``python tests/golden_files.py``.
"""

import json

import pytest
import torch

from golden_files import TABLE, committed_files, decoded_sha256, key
from miracle import coder
from miracle.blocks import BlockLayout

GOLDEN = json.loads(TABLE.read_text())


def test_the_table_lists_every_committed_file():
    assert sorted(GOLDEN) == sorted(key(path) for path in committed_files())


@pytest.mark.parametrize("path", committed_files(), ids=key)
def test_a_committed_file_decodes_to_its_golden_weights(path):
    assert decoded_sha256(path) == GOLDEN[key(path)]


def test_golden_layout():
    layout = BlockLayout({"w": (3, 4), "b": (5,)}, {"w": 3}, 3, hash_seed=7, partition_seed=11)
    assert layout.block_dim == 3
    assert layout.slot_of_free.tolist() == [2, 0, 6, 3, 5, 1, 4, 8, 7]
    index, sign = layout._hashing(layout.tensors[0], 0)
    assert index.tolist() == [9, 1, 8, 6, 7, 5, 10, 11, 4, 0, 2, 3]
    assert sign.tolist() == [1, -1, -1, -1, -1, -1, -1, 1, -1, -1, 1, 1]


@pytest.mark.parametrize("rule, indices", [("mrc", [50, 145, 230, 69]), ("ordered", [0, 12, 0, 2]),
                                           ("greedy", [52, 28, 148, 79])])
def test_golden_encoder_indices(rule, indices):
    mu = torch.tensor([[0.75, -0.15, -1.0], [0.25, -0.5, -0.75], [0.2, 0.4, -0.35], [-0.2, -0.3, 0.1]])
    sigma = torch.tensor([[0.6, 0.75, 0.8], [0.5, 0.65, 0.7], [0.9, 0.8, 0.55], [0.6, 0.85, 0.7]])
    chosen, samples = coder.encode(mu, sigma, torch.ones(4, 3), 8, 1234, block_ids=torch.arange(4), rule=rule,
                                   sender_seed=5)
    assert chosen.tolist() == indices
    assert torch.equal(samples, coder.decode(torch.ones(4, 3), chosen, 8, 1234, block_ids=torch.arange(4)))
