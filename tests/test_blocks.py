import pytest
import torch

from miracle.blocks import BlockLayout, num_blocks_for
from miracle.errors import InvalidInput

SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 72), "fc.bias": (10,)}
GROUPS = {"conv.weight": 2, "fc.weight": 7}


def _layout(hash_seed=0, partition_seed=0, num_blocks=13):
    return BlockLayout(SHAPES, GROUPS, num_blocks, hash_seed, partition_seed)


def test_counts_and_no_empty_block():
    layout = _layout()
    expected_free = 108 + 8 + -(-720 // 7) + 10
    assert layout.num_free == expected_free
    per_block = layout.is_real.sum(1)
    assert per_block.min() >= layout.num_free // 13 and per_block.max() <= -(-layout.num_free // 13)
    # every free variable has its own slot
    assert len(set(layout.slot_of_free.tolist())) == layout.num_free


@pytest.mark.parametrize("name", ["lenet5", "lenet5-relu"])
def test_lenet5_default_hashing_gives_the_official_count(name):
    from miracle.models import create_model, get_model_spec

    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == 431_080
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    layout = BlockLayout(shapes, get_model_spec(name).group_sizes, 750)
    assert layout.num_free == 26_580
    assert layout.is_real.sum(1).min() > 0


def test_layout_is_reproducible_from_the_seeds_and_differs_for_others():
    values = torch.arange(1.0, 13 * _layout().block_dim + 1).view(13, -1)
    a, b = _layout(3, 5).blocks_to_tensors(values), _layout(3, 5).blocks_to_tensors(values)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other_hash = _layout(4, 5).blocks_to_tensors(values)
    assert not torch.equal(a["fc.weight"], other_hash["fc.weight"])
    assert torch.equal(_layout(3, 5).slot_of_free, _layout(4, 5).slot_of_free)
    assert not torch.equal(_layout(3, 5).slot_of_free, _layout(3, 6).slot_of_free)


def test_hashing_shares_each_variable_among_g_signed_positions():
    layout = _layout()
    free_values = torch.randn(layout.num_blocks, layout.block_dim, generator=torch.Generator().manual_seed(0))
    w = layout.blocks_to_tensors(free_values)["fc.weight"].reshape(-1)
    magnitudes, counts = torch.unique(w.abs(), return_counts=True)
    assert counts.max() == 7 and counts.sum() == 720
    assert (w > 0).any() and (w < 0).any()
    assert not torch.equal(w.abs(), w)  # signs are really applied


def test_projection_inverts_expansion():
    layout = _layout()
    blocks = torch.randn(layout.num_blocks, layout.block_dim, generator=torch.Generator().manual_seed(1))
    blocks[~layout.is_real] = 0
    back = layout.tensors_to_blocks(layout.blocks_to_tensors(blocks))
    torch.testing.assert_close(back, blocks)


@pytest.mark.parametrize("budget, bits, message", [(10, 16, "smaller than one block"), (100, 0, "between 1 and 24"),
                                                   (100, 25, "between 1 and 24")])
def test_bad_budgets(budget, bits, message):
    with pytest.raises(InvalidInput, match=message):
        num_blocks_for(budget, bits)


def test_more_blocks_than_variables_is_an_error():
    with pytest.raises(InvalidInput, match="free variables"):
        BlockLayout({"w": (5,)}, {}, 6)


def test_lenet5_relu_is_lenet5_with_a_relu_after_each_convolution():
    from torch.nn import functional as F

    from miracle.models import create_model

    caffe, relu = create_model("lenet5", seed=1), create_model("lenet5-relu", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(caffe.parameters(), relu.parameters()))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    h = F.max_pool2d(F.relu(relu.conv1(x)), 2)
    h = F.max_pool2d(F.relu(relu.conv2(h)), 2)
    expected = relu.fc2(F.relu(relu.fc1(h.flatten(1))))
    torch.testing.assert_close(relu(x), expected)
    assert not torch.allclose(caffe(x), expected)


def _expansion_by_advanced_indexing(layout, blocks):
    """The layout's expansion written plainly, with autograd's own gather backward."""
    free = blocks.reshape(-1)[layout.slot_of_free]
    out = {}
    for entry, index, sign in zip(layout.tensors, layout._hash_index, layout._hash_sign):
        values = free[entry.offset : entry.offset + entry.num_free]
        if entry.group_size > 1:
            values = values[:, None].expand(-1, entry.group_size).reshape(-1)[index] * sign
        out[entry.name] = values.view(entry.shape)
    return out


def test_the_fast_expansion_gives_the_same_values_and_gradients_bit_for_bit():
    layout = _layout()
    generator = torch.Generator().manual_seed(2)
    blocks = torch.randn(layout.num_blocks, layout.block_dim, generator=generator)
    weights = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    results = []
    for expand in (layout.blocks_to_tensors, lambda b: _expansion_by_advanced_indexing(layout, b)):
        leaf = blocks.clone().requires_grad_(True)
        tensors = expand(leaf)
        sum(((tensors[name] * weights[name]) ** 2).sum() for name in SHAPES).backward()
        results.append((tensors, leaf.grad))
    (fast, fast_grad), (plain, plain_grad) = results
    assert all(torch.equal(fast[name], plain[name]) for name in SHAPES)
    assert torch.equal(fast_grad, plain_grad)
    assert torch.all(fast_grad[~layout.is_real] == 0) and fast_grad[layout.is_real].abs().min() > 0
