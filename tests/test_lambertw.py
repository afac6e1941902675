import math

import numpy as np
import pytest
import torch
from scipy.special import lambertw as scipy_lambertw

from miracle.lambertw import lambertw0


def _reference(z: np.ndarray) -> np.ndarray:
    return scipy_lambertw(z, 0).real


@pytest.mark.parametrize(
    "z, rtol",
    [
        (np.linspace(-0.36, -0.01, 200), 1e-13),
        (-np.logspace(-300, -2, 100), 1e-13),  # just below 0
        (np.logspace(-300, 0, 100), 1e-13),  # just above 0
        (np.logspace(0, 300, 100), 1e-13),
    ],
)
def test_matches_scipy(z, rtol):
    w = lambertw0(torch.tensor(z, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(w, _reference(z), rtol=rtol, atol=0)


def test_near_the_branch_point():
    # W0 near -1/e is ill-conditioned (dW/dz ~ 1/sqrt(z + 1/e)); the error allowed is the
    # rounding of z itself carried through that derivative.
    distance = np.logspace(-14, -3, 60)
    z = -math.exp(-1) + distance
    w = lambertw0(torch.tensor(z)).numpy()
    allowed = 1e-15 / np.sqrt(distance) + 1e-13
    assert np.all(np.abs(w - _reference(z)) <= allowed)
    assert lambertw0(torch.tensor([-math.exp(-1)])).item() == pytest.approx(-1.0, abs=1e-7)


def test_inverse_property_and_float32():
    z = torch.linspace(-0.3678, 50.0, 1000, dtype=torch.float32)
    w = lambertw0(z)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w * torch.exp(w), z, rtol=1e-5, atol=1e-6)


def test_gradient_is_exact():
    z = torch.tensor([-0.36, -0.2, -1e-3, 0.0, 1e-3, 0.5, 3.0, 100.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambertw0, (z,))


def test_rejects_values_below_the_branch_point():
    with pytest.raises(ValueError, match="-1/e"):
        lambertw0(torch.tensor([-0.5]))
