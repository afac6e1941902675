import math

import pytest
import torch

from miracle.blocks import BlockLayout
from miracle.lambertw import lambertw0
from miracle.posteriors import LN2, MeanKL, MeanVar, free_mean_to_mean_std, kl_nats, mean_kl_to_mean_std, narrowing_to_std


def test_mean_kl_reproduces_its_kl_on_a_wide_grid():
    kappa = torch.logspace(-9, 2, 60, dtype=torch.float64)  # nats, from nearly 0 to 100
    fraction = torch.tensor([0.0, 0.3, -0.7, 0.99, -0.999999, 1 - 1e-9], dtype=torch.float64)
    s = torch.tensor([1e-3, 1.0, 50.0], dtype=torch.float64)
    k, r, sc = torch.meshgrid(kappa, fraction, s, indexing="ij")
    mu, sigma = mean_kl_to_mean_std(k, r, sc)
    torch.testing.assert_close(kl_nats(mu, sigma, sc), k, rtol=1e-5, atol=0)
    assert torch.all(sigma <= sc)  # principal branch: sigma never exceeds s
    torch.testing.assert_close(mu, sc * torch.sqrt(2 * k) * r)


def test_mean_kl_gradient_is_exact():
    kappa = torch.tensor([1e-4, 0.05, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    fraction = torch.tensor([0.1, -0.9, 0.5, 0.99], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: mean_kl_to_mean_std(a, b, c), (kappa, fraction, s))


def _layout(num_free=103, num_blocks=7, seed=0):
    return BlockLayout({"w": (num_free,)}, {}, num_blocks, seed, seed)


def _randomised_mean_kl(layout, s, form, **kwargs):
    post = MeanKL(layout, 16, torch.randn(s.shape, generator=torch.Generator().manual_seed(1)) * 0.2, s,
                  form=form, **kwargs)
    with torch.no_grad():
        post.kl_logits.normal_(0, 3, generator=torch.Generator().manual_seed(2))
        means = post.mean if form == "free-mean" else post.mean_logits
        means.normal_(0, 5, generator=torch.Generator().manual_seed(3))  # far beyond any bound
    return post


def _block_kl_bits(post, s):
    mu, sigma = post.mean_std(s)
    return kl_nats(mu.double(), sigma.double(), s.double()) / LN2


@pytest.mark.parametrize("form", MeanKL.FORMS)
def test_mean_kl_blocks_cost_exactly_their_budget_and_padding_costs_nothing(form):
    layout = _layout()
    s = torch.full((layout.num_blocks, layout.block_dim), 0.3)
    kl_bits = _block_kl_bits(_randomised_mean_kl(layout, s, form), s)
    torch.testing.assert_close(kl_bits.sum(1), torch.full((layout.num_blocks,), 16.0, dtype=torch.float64), atol=1e-3, rtol=0)
    assert torch.all(kl_bits[~layout.is_real] == 0)


@pytest.mark.parametrize("form", MeanKL.FORMS)
def test_mean_kl_margin_sets_a_lower_kl(form):
    layout = _layout()
    s = torch.ones(layout.num_blocks, layout.block_dim)
    post = MeanKL(layout, 16, torch.zeros_like(s), s, kl_bits=14.5, form=form)
    torch.testing.assert_close(_block_kl_bits(post, s).sum(1),
                               torch.full((layout.num_blocks,), 14.5, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ValueError):
        MeanKL(layout, 16, torch.zeros_like(s), s, kl_bits=17, form=form)
    with pytest.raises(ValueError, match="form"):
        MeanKL(layout, 16, torch.zeros_like(s), s, form="free")


@pytest.mark.parametrize("form", MeanKL.FORMS)
def test_a_wider_budget_scale_widens_every_mean_kl_block_by_that_factor(form):
    layout = _layout()
    s = torch.full((layout.num_blocks, layout.block_dim), 0.3)
    post = _randomised_mean_kl(layout, s, form)
    mu, sigma = post.mean_std(s, budget_scale=2.5)
    kl_bits = kl_nats(mu.double(), sigma.double(), s.double()).sum(1) / LN2
    torch.testing.assert_close(kl_bits, torch.full((layout.num_blocks,), 40.0, dtype=torch.float64), atol=1e-3, rtol=0)


def test_mean_var_anneals_towards_the_widened_budget():
    layout = _layout(num_free=20, num_blocks=2)
    s = torch.ones(2, layout.block_dim)
    post = MeanVar(layout, 16, torch.zeros_like(s), s, beta_initial=1.0, eps_beta=0.1)
    post.after_step(torch.tensor([20.0, 40.0]), budget_scale=2.0)  # budget 32 bits
    torch.testing.assert_close(post.beta, torch.tensor([1 / 1.1, 1.1]))


def test_free_mean_keeps_affordable_means_and_scales_down_the_rest():
    layout = _layout()
    s = torch.full((layout.num_blocks, layout.block_dim), 0.5)
    budget = 16 * LN2
    small = torch.full_like(s, 0.1)  # costs 0.02 nats a weight: affordable
    mu, sigma = free_mean_to_mean_std(small, torch.zeros_like(s), budget, s, layout.is_real, 0.95)
    torch.testing.assert_close(mu[layout.is_real], small[layout.is_real])
    assert torch.all(sigma[layout.is_real] < s[layout.is_real])  # what is left narrows every weight
    large = torch.full_like(s, 3.0)  # 18 nats a weight: far over the budget
    mu, sigma = free_mean_to_mean_std(large, torch.zeros_like(s), budget, s, layout.is_real, 0.95)
    mean_cost = torch.where(layout.is_real, (mu.double() / s) ** 2 / 2, 0.0).sum(1)
    torch.testing.assert_close(mean_cost, torch.full_like(mean_cost, 0.95 * budget))
    assert torch.all(mu[layout.is_real] > 0)  # scaled, not clipped: the signs and ratios stay


def test_free_mean_gradient_is_exact():
    layout = _layout(num_free=10, num_blocks=2)
    shape = (layout.num_blocks, layout.block_dim)
    mean = (torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).requires_grad_()
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_()
    s = torch.full(shape, 0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m, l, sc: free_mean_to_mean_std(m, l, 3.0, sc, layout.is_real, 0.95), (mean, logits, s))


def test_mean_var_annealing_moves_beta_the_right_way():
    layout = _layout(num_free=20, num_blocks=4)
    s = torch.ones(4, layout.block_dim)
    post = MeanVar(layout, 16, torch.zeros_like(s), s, beta_initial=1.0, eps_beta=0.1)
    post.after_step(torch.tensor([20.0, 10.0, 16.0, 16.5]))
    torch.testing.assert_close(post.beta, torch.tensor([1.1, 1 / 1.1, 1 / 1.1, 1.1]))
    post.annealing[0] = False  # a coded block keeps its beta
    post.after_step(torch.tensor([20.0, 20.0, 20.0, 20.0]))
    torch.testing.assert_close(post.beta, torch.tensor([1.1, 1.0, 1.0, 1.21]))


def test_mean_var_kl_matches_the_formula_and_padding_is_free():
    layout = _layout()
    s = torch.full((layout.num_blocks, layout.block_dim), 2.0)
    post = MeanVar(layout, 16, torch.full_like(s, 1.0), torch.full_like(s, 0.5))
    mu, sigma = post.mean_std(s)
    expected = math.log(2 / 0.5) + (0.25 + 1) / 8 - 0.5
    kl = kl_nats(mu, sigma, s)
    torch.testing.assert_close(kl[layout.is_real], torch.full_like(kl[layout.is_real], expected))
    assert torch.all(kl[~layout.is_real] == 0)


def test_the_narrowing_in_float32_keeps_float32_precision_with_the_gradient_through_w0():
    # Costs up to 40 nats (a budget of 16 bits is 11): beyond, sigma leaves float32's normal range.
    extra = torch.cat([torch.logspace(-14, math.log10(40), 4000, dtype=torch.float64), torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3])
    s = torch.full_like(extra, 0.7)
    full = narrowing_to_std(extra, s)  # float64: the whole solve
    fast = narrowing_to_std(extra, s.float())  # float32: fewer Halley steps
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), full, rtol=2.0**-23, atol=0)  # within one float32 step
    # The closed-form gradient is the derivative through W0, on both arguments.
    e = torch.tensor([1e-3, 0.01, 0.4, 2.0, 30.0], dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(narrowing_to_std, (e, scales))
    e = torch.tensor([1e-9, 1e-6, 0.01, 0.4, 2.0, 30.0], dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    through_w0 = scales * torch.sqrt(-lambertw0(-torch.exp(-1.0 - 2 * e)))
    closed_form = narrowing_to_std(e, scales)
    for a, b in zip(torch.autograd.grad(through_w0.sum(), (e, scales)), torch.autograd.grad(closed_form.sum(), (e, scales))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
