import pytest
import torch

from miracle.augmentation import random_shift
from miracle.errors import InvalidInput


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_each_image_moves_by_its_own_offset_within_the_range():
    images = torch.zeros(400, 2, 9, 9)
    images[:, 0, 4, 4] = 1.0  # one lit pixel in the centre of channel 0, channel 1 stays dark
    shifted = random_shift(images, 2, _generator())
    assert shifted.shape == images.shape and shifted[:, 1].eq(0).all()
    lit = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = lit // 9 - 4, lit % 9 - 4
    assert shifted.sum((1, 2, 3)).eq(1).all()  # moved, never lost or doubled, within 2 pixels
    assert {(r, c) for r, c in zip(rows.tolist(), cols.tolist())} == {(r, c) for r in range(-2, 3) for c in range(-2, 3)}


def test_content_moves_whole_and_the_border_fills_with_zeros():
    image = torch.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    shifted = random_shift(image.repeat(200, 1, 1, 1), 1, _generator())
    for out in shifted[:, 0]:
        nonzero = out.nonzero()
        top, left = nonzero.min(0).values.tolist()
        value = out[top, left].item()  # the pixel now at the top left of the content
        row, col = divmod(int(value) - 1, 5)
        dy, dx = top - row, left - col
        assert abs(dy) <= 1 and abs(dx) <= 1
        expected = torch.zeros(5, 5)
        expected[max(dy, 0):5 + min(dy, 0), max(dx, 0):5 + min(dx, 0)] = \
            image[0, 0, max(-dy, 0):5 - max(dy, 0), max(-dx, 0):5 - max(dx, 0)]
        assert torch.equal(out, expected)


def test_the_same_generator_gives_the_same_shifts():
    images = torch.rand(64, 1, 28, 28, generator=_generator(5))
    assert torch.equal(random_shift(images, 2, _generator(1)), random_shift(images, 2, _generator(1)))
    assert not torch.equal(random_shift(images, 2, _generator(1)), random_shift(images, 2, _generator(2)))


@pytest.mark.parametrize("batch", [torch.rand(8, 784), torch.randint(0, 255, (8, 1, 28, 28))])
def test_what_is_not_a_float_image_batch_is_refused(batch):
    with pytest.raises(InvalidInput, match=r"random shifts need float image batches \[N, C, H, W\].*random-shift-px"):
        random_shift(batch, 2, _generator())


def test_a_shift_as_large_as_the_image_is_refused():
    images = torch.rand(4, 1, 28, 28)
    assert random_shift(images, 27, _generator()).shape == images.shape
    with pytest.raises(InvalidInput, match="below 28"):
        random_shift(images, 28, _generator())
