import pytest
import torch
from torch import nn

from miracle.errors import InvalidInput
from miracle.models import LeNet5, create_model
from miracle.units import parse_budget_bits
from miracle.posteriors import LN2
from miracle.variational import VariationalConfig, VariationalModel, select_parameters


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).flatten(1))


@pytest.mark.parametrize("param", ["mean-kl", "mean-var"])
def test_wrapping_keeps_class_and_state_dict_keys(param):
    model = create_model("lenet5")
    keys = list(model.state_dict())
    vmodel = VariationalModel(model, VariationalConfig(budget_bits=12000, param=param))
    assert type(vmodel.model) is LeNet5 and list(vmodel.model.state_dict()) == keys
    exported = vmodel.export(use_mean=True)
    assert type(exported) is LeNet5 and list(exported.state_dict()) == keys


def test_default_selection_and_include_exclude():
    model = Mixed()
    assert set(select_parameters(model)) == {"conv.weight", "conv.bias", "head.weight", "head.bias"}
    assert set(select_parameters(model, exclude=["*.bias"])) == {"conv.weight", "head.weight"}
    assert set(select_parameters(model, include=["norm.*"])) == {"norm.weight", "norm.bias"}
    with pytest.raises(InvalidInput, match="no parameters are selected"):
        VariationalModel(nn.Sequential(nn.ReLU()), VariationalConfig(budget_bits=1000))
    with pytest.raises(InvalidInput, match="no parameters are selected"):
        select_parameters(model, exclude=["*"])


def test_forward_uses_the_posterior_and_mean_is_deterministic():
    vmodel = VariationalModel(Mixed(), VariationalConfig(budget_bits=4000, param="mean-var"))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    vmodel.eval()
    assert torch.equal(vmodel(x, use_mean=True), vmodel(x, use_mean=True))
    a = vmodel(x, generator=torch.Generator().manual_seed(1))
    b = vmodel(x, generator=torch.Generator().manual_seed(1))
    c = vmodel(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the exported model, run on its own, gives what the wrapper gives with the mean
    torch.testing.assert_close(vmodel.export(use_mean=True)(x), vmodel(x, use_mean=True))


def test_gradients_reach_the_posterior_and_the_uncoded_parameters():
    vmodel = VariationalModel(Mixed(), VariationalConfig(budget_bits=4000, param="mean-kl"))
    out = vmodel(torch.randn(2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert vmodel.posterior.mean.grad.abs().sum() > 0
    assert vmodel.prior.log_scale.grad.abs().sum() > 0
    assert vmodel.model.norm.weight.grad is not None  # not coded: trained as usual
    assert vmodel.model.conv.weight.grad is None  # coded: replaced by the posterior


def _strides_seen_by_the_convolutions(vmodel: VariationalModel, x: torch.Tensor) -> dict[str, tuple]:
    seen = {}
    convolutions = {name: m for name, m in vmodel.model.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.update({name: m.weight.stride()}))
             for name, m in convolutions.items()]
    vmodel(x, generator=torch.Generator().manual_seed(0)).sum().backward()
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("name", ["lenet5", "lenet5-relu"])
def test_the_lenet5_models_train_in_channels_last(name):
    model = create_model(name)
    vmodel = VariationalModel(model, VariationalConfig(budget_bits=4000))
    seen = _strides_seen_by_the_convolutions(vmodel, torch.randn(2, 1, 28, 28))
    expected = {n: m.weight.stride() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in model.modules() if isinstance(m, nn.Conv2d))
    assert seen == expected
    # the layout changes the speed, not the values: a sample runs alike in the default layout
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    contiguous = VariationalModel(create_model(name).to(memory_format=torch.contiguous_format), vmodel.config)
    contiguous.load_state_dict(vmodel.state_dict())
    vmodel.eval()
    contiguous.eval()
    torch.testing.assert_close(contiguous(x, generator=torch.Generator().manual_seed(1)),
                               vmodel(x, generator=torch.Generator().manual_seed(1)))


def test_lenet5_pools_before_its_relu_with_the_same_outputs_and_gradients():
    def activate_then_pool(model, x):
        x = nn.functional.max_pool2d(nn.functional.relu(model.conv1(x)), 2)
        x = nn.functional.max_pool2d(nn.functional.relu(model.conv2(x)), 2)
        return model.fc2(nn.functional.relu(model.fc1(x.flatten(1))))

    model = create_model("lenet5-relu", seed=4)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    results = []
    for forward in (model, lambda x: activate_then_pool(model, x)):
        model.zero_grad()
        out = forward(x)
        out.square().sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*results))


class StandardisedConv(nn.Module):
    """Weight standardisation views its weight as [out, in * kh * kw], which only the default
    layout allows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.head = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        self.weight_strides = self.conv.weight.stride()
        w = self.conv.weight.view(4, -1)
        w = ((w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-5)).view_as(self.conv.weight)
        return self.head(nn.functional.conv2d(x, w, self.conv.bias).flatten(1))


def test_a_model_in_the_default_layout_gets_its_weights_in_the_default_layout():
    vmodel = VariationalModel(StandardisedConv(), VariationalConfig(budget_bits=4000))
    vmodel(torch.randn(2, 2, 28, 28), generator=torch.Generator().manual_seed(0)).sum().backward()
    assert vmodel.model.weight_strides == (18, 9, 3, 1)
    assert vmodel.posterior.mean.grad.abs().sum() > 0


@pytest.mark.parametrize("text, bits", [("1.5KB", 12000), ("1.5kB", 12000), ("1536B", 12288), ("1KiB", 8192),
                                        ("12000", 12000), ("12000bits", 12000), (800, 800)])
def test_budget_units(text, bits):
    assert parse_budget_bits(text) == bits


@pytest.mark.parametrize("text", ["", "1.5MB", "abc", "-3KB", "0"])
def test_bad_budget_text(text):
    with pytest.raises(InvalidInput):
        parse_budget_bits(text)


def test_the_vgg_codes_its_convolutions_and_linears_and_sends_batchnorm_as_side_information():
    from miracle.budget import Budget
    from miracle.compress import index_bits_for
    from miracle.models import create_model

    model = create_model("vgg-bn")
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    coded = select_parameters(model)
    assert len(coded) == 16 and not any(isinstance(model.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)
                                        for n in coded)
    index_bits = index_bits_for(Budget.from_options("20KB"), model, bits_per_block=16, group_sizes={},
                                model_name="vgg-bn")
    # Six BatchNorms' weights, biases and running statistics (4 x 896 float32) come off the
    # budget, with their names, the header and the prior scales (under 1 KB).
    assert 20_000 - 4 * 4 * 896 - 1000 < index_bits / 8 < 20_000 - 4 * 4 * 896


def test_the_means_share_of_the_kl_reaches_the_mean_kl_posterior():
    torch.manual_seed(0)  # only the model's own default init
    config = VariationalConfig(budget_bits=800, param="mean-kl", mean_share=0.3)
    vmodel = VariationalModel(nn.Sequential(nn.Linear(20, 10)), config)
    with torch.no_grad():
        vmodel.posterior.mean.mul_(100.0)  # means far too dear for the budget: they are scaled down
        mu, sigma, s = vmodel.block_mean_std()
    mean_cost = ((mu.double() / s.double()) ** 2 / 2).sum(1)
    torch.testing.assert_close(mean_cost, torch.full_like(mean_cost, 0.3 * 16 * LN2))
    torch.testing.assert_close(vmodel.kl_nats_per_block(), torch.full_like(mean_cost, 16 * LN2))
