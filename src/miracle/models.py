"""Models by name. Registering a new one is one decorator::

    @register_model("mynet", group_sizes={"fc.weight": 4})
    class MyNet(nn.Module): ...

``group_sizes`` is the default hashing of the model (parameter name -> group size g: each
free variable is shared by g weights, see :mod:`miracle.blocks`); parameters not named use 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .errors import InvalidInput


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[], nn.Module]
    group_sizes: dict[str, int] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, group_sizes: dict[str, int] | None = None):
    def decorator(factory):
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, factory, dict(group_sizes or {}))
        return factory

    return decorator


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, seed: int = 0) -> nn.Module:
    """A fresh model; its initial weights come from ``seed`` (torch's global RNG is untouched)."""
    factory = get_model_spec(name).factory
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def model_names() -> list[str]:
    return sorted(_REGISTRY)


# The hashing of the official MIRACLE code for LeNet-5 (its paper text says 2x and 64x):
# 26,580 free variables for 431,080 parameters.
LENET5_HASHING = {"conv2.weight": 2, "fc1.weight": 50}


@register_model("lenet5", group_sizes=LENET5_HASHING)
class LeNet5(nn.Module):
    """The Caffe LeNet-5: conv 20@5x5, maxpool, conv 50@5x5, maxpool, fc 800-500, ReLU, fc 500-10.
    No activation after the convolutions (only max-pooling), as in Caffe's own example."""

    conv_activation = staticmethod(lambda x: x)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv_activation(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(self.conv_activation(self.conv2(x)), 2)
        x = nn.functional.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register_model("lenet5-relu", group_sizes=LENET5_HASHING)
class LeNet5ReLU(LeNet5):
    """The LeNet-5 of the official MIRACLE code, which its published 0.96% comes from: the same
    layers and parameters, with a ReLU after each convolution. It trains much better under the
    posterior's noise (results/experiments/lenet5-relu.json). Its own name, because a file
    cannot tell the two apart by their parameters' names and shapes."""

    conv_activation = staticmethod(nn.functional.relu)


@register_model("lenet300")
class LeNet300(nn.Module):
    """LeNet-300-100: fully connected 784-300-100-10 with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        x = nn.functional.relu(self.fc1(x.flatten(1)))
        x = nn.functional.relu(self.fc2(x))
        return self.fc3(x)
