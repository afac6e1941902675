"""Named schedules: how long to train and how to code, measured on LeNet-5 / MNIST.

A preset is a set of training and coding options, by the names that ``compress()`` takes as
keywords and the command line as options (``steps`` is ``--steps``). On the command line,
``--preset NAME`` sets them and any option given explicitly wins; in Python the same:
``miracle.compress(model, data, "1.52KB", "m.mrc", preset="fast", steps=30000)``.

Each preset's figures (file size, test error, wall time, seeds) are in the result files it
names, made by the commands they record.
"""

from __future__ import annotations

from .errors import InvalidInput

# The README's first command, meant for a few minutes of two cores (10,400 steps; what it gives
# at 1.52 KB: results/demo-lenet5-relu-mnist.json). At 3.03 KB: 0.74% over five seeds
# (results/schedule/lenet5-relu-mnist-3.03KB-mean-kl-demo-*).
_DEMO = dict(steps=5000, kl_anneal_from=32.0, kl_anneal_steps=2000, blocks_per_group=20, retrain_steps=150,
             rule="greedy", random_shift_px=0)

PRESETS: dict[str, dict] = {
    "demo": _DEMO,
    # LeNet-5 at 1.52 KB in about 17 minutes of two cores: 0.93% over three seeds
    # (results/schedule/lenet5-relu-mnist-1.52KB-mean-kl-fast-share05-*).
    "fast": dict(_DEMO, steps=20000, kl_anneal_steps=5000, blocks_per_group=10),
    # The demo schedule on training images shifted by up to 2 pixels (image data only): LeNet-5
    # at 3.03 KB, 0.66% over five seeds, 9.3 minutes for seed 0
    # (results/schedule/lenet5-relu-mnist-3.03KB-mean-kl-augmented-*).
    "augmented": dict(_DEMO, random_shift_px=2),
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
