"""Models by name. Registering a new one is one decorator::

    @register_model("mynet", group_sizes={"fc.weight": 4})
    class MyNet(nn.Module): ...

``group_sizes`` is the default hashing of the model (parameter name -> group size g: each
free variable is shared by g weights, see :mod:`miracle.blocks`); parameters not named use 1.
"""

from __future__ import annotations

import importlib
import os
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
            raise InvalidInput(f"a model named {name!r} is already registered")
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


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def default_group_sizes(name: str) -> dict[str, int]:
    """The registered model's hashing; none for a user's own model."""
    return dict(_REGISTRY[name].group_sizes) if name in _REGISTRY else {}


def build_model(name: str, seed: int = 0, model_args: dict | None = None) -> nn.Module:
    """A registered model by name, or a user's own class by its import path
    ``package.module:ClassName``, built with ``model_args`` as keywords and initialised from
    ``seed``. Only a name the user typed is imported: a file or checkpoint never leads here."""
    if ":" not in name:
        if model_args:
            raise InvalidInput("--model-args is for your own class (package.module:ClassName); "
                               f"the registered model {name} takes none")
        return create_model(name, seed)
    module_name, _, class_name = name.partition(":")
    if not module_name or module_name.startswith("."):
        raise InvalidInput(f"--model {name} names no importable module; give it as package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"cannot import {module_name} for --model {name} ({exc}); "
                           "install it or add its folder to PYTHONPATH") from None
    factory = getattr(module, class_name, None)
    if not callable(factory):
        raise InvalidInput(f"{module_name} has no class {class_name}; give --model as package.module:ClassName")
    if model_args is not None and not isinstance(model_args, dict):
        raise InvalidInput(f"--model-args must be a JSON object of keyword arguments, got {model_args!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(**(model_args or {}))
        except TypeError as exc:
            raise InvalidInput(f"{name}(**{model_args or {}}) failed ({exc}); check --model-args") from None
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"{name} made a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the ``state_dict`` saved at ``path`` (``torch.save(model.state_dict(), path)``)
    into ``model``: every tensor must be there, with its shape. Read with the safe loader."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such weights file") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a plain state_dict
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{path} is not a state_dict saved by torch.save ({reason[:200]}); "
                           "save model.state_dict(), not the model") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInput(f"{path} does not hold a state_dict (names to tensors); save model.state_dict()")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                    for label, names in (("missing", missing), ("unexpected", unexpected),
                                         ("other shapes", misshapen)) if names]
        raise InvalidInput(f"{path} does not fit the model ({'; '.join(problems)}); "
                           "check --model and --model-args")
    model.load_state_dict(state)
    return model


# The hashing of the official MIRACLE code for LeNet-5 (its paper text says 2x and 64x):
# 26,580 free variables for 431,080 parameters.
LENET5_HASHING = {"conv2.weight": 2, "fc1.weight": 50}


@register_model("lenet5", group_sizes=LENET5_HASHING)
class LeNet5(nn.Module):
    """The Caffe LeNet-5: conv 20@5x5, maxpool, conv 50@5x5, maxpool, fc 800-500, ReLU, fc 500-10.
    No activation after the convolutions (only max-pooling), as in Caffe's own example."""

    # Applied after each convolution's pooling: it must be non-decreasing (so that a max
    # commutes with it), as the identity and ReLU are.
    conv_activation = staticmethod(lambda x: x)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)
        # In channels_last oneDNN's convolutions and max-pooling take a training step about
        # 1.4 times faster on a CPU (benchmarks/training.py --layouts); the posterior's samples
        # follow the parameters' layout. (The VGG gains much less and keeps the default.)
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        # Pooling before the activation gives the same outputs and gradients and activates a
        # quarter as many values.
        x = self.conv_activation(nn.functional.max_pool2d(self.conv1(x), 2))
        x = self.conv_activation(nn.functional.max_pool2d(self.conv2(x), 2))
        x = nn.functional.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register_model("lenet5-relu", group_sizes=LENET5_HASHING)
class LeNet5ReLU(LeNet5):
    """The LeNet-5 of the official MIRACLE code, which its published 0.96% comes from: the same
    layers and parameters, with a ReLU after each convolution (applied after its pooling, which
    is the same). It trains much better under the posterior's noise
    (results/experiments/lenet5-relu.json). Its own name, because a file cannot tell the two
    apart by their parameters' names and shapes."""

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


@register_model("vgg-bn")
class VGGBatchNorm(nn.Module):
    """A VGG-style CNN for 28x28 images: three stages of two 3x3 convolutions (64, 128, 256
    channels) with BatchNorm and ReLU, each stage max-pooled, then fc 2304-256-10; 1.73 million
    parameters. Its scale is what the coder's and the training's costs are measured on."""

    def __init__(self) -> None:
        super().__init__()
        layers, channels = [], 1
        for width in (64, 128, 256):
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(256 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
