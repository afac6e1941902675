"""What a user would pick instead of MIRACLE: post-training compression of a plainly trained network.

The network (a registered model, trained deterministically by ``baseline.py``'s plain step)
is trained on the training data less the study's validation split, so that every setting
below is chosen on examples it never saw in training and the test set only scores the choice.
Three baselines, each a grid of settings:

- ``float32 + lzma``: the weights as they are, compressed by ``lzma`` (xz, preset 9e);
- ``pruning + uniform quantization + lzma``: global magnitude pruning, then a uniform
  quantizer per tensor (2 to 8 bits, step from a clipped range), the integer codes and one
  float32 step per tensor compressed by ``lzma``;
- ``pruning + NNCodec``: the same pruning, then NNCodec 2.x (Fraunhofer HHI's implementation of
  the MPEG neural-network coding standard, ISO/IEC 15938-17: dependent quantization and
  DeepCABAC) at a grid of quantization parameters.

Sizes are the bytes of each payload; like our files, they leave out only the architecture
(known to the reader). For each baseline the
settings on the size-against-validation-error Pareto front are kept and scored on the test set.
None of them retrains after compressing: they are what is done to an already trained network.

NNCodec requires torchvision, which this machine cannot install, but imports it only for its
own dataset loaders; this script installs it beside the pinned torch without its dependencies
(``pip install --no-deps nncodec==2.1.3``, which builds its C++ extension) and stubs the
modules that its package imports but the coding path never uses::

    python benchmarks/baselines.py --dataset mnist \\
        --out results/study-full/lenet5-relu-mnist/baselines.json

Written into a study part's folder, the points join that part's size-against-error figure the
next time ``miracle study`` runs there.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import lzma
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from miracle import files, threads
from miracle.batches import accuracy
from miracle.data import DATASETS, carve, load
from miracle.models import create_model, model_names
from miracle.provenance import provenance
from miracle.study.runner import VALIDATION_SEED
from baseline import train_plain  # benchmarks/baseline.py

NNCODEC = "nncodec==2.1.3"
PRUNED_FRACTIONS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
QUANTIZER_BITS = (2, 3, 4, 5, 6, 8)
CLIP_FRACTIONS = (1.0, 0.5, 0.25)  # of a tensor's largest magnitude: the quantizer's range
NNCODEC_QPS = (-44, -40, -36, -32, -28, -24, -20, -16)


def xz(payload: bytes) -> int:
    return len(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))


def prune(state: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning of every float tensor: the ``fraction`` of smallest weights set to 0."""
    if fraction == 0:
        return state
    magnitudes = torch.cat([t.abs().flatten() for t in state.values()])
    threshold = magnitudes.kthvalue(max(1, int(fraction * magnitudes.numel()))).values
    return {name: torch.where(t.abs() > threshold, t, torch.zeros_like(t)) for name, t in state.items()}


def quantize(state: dict[str, torch.Tensor], bits: int, clip: float) -> tuple[dict[str, torch.Tensor], int]:
    """Uniform symmetric quantization per tensor, zero kept exact; the state it decodes to, and
    the bytes of its lzma-compressed codes and steps."""
    levels = 2 ** (bits - 1) - 1
    decoded, payload = {}, bytearray()
    for name, t in state.items():
        step = float(t.abs().max()) * clip / levels or 1.0
        codes = torch.clamp(torch.round(t / step), -levels, levels).to(torch.int8)
        decoded[name] = codes.float() * step
        payload += np.float32(step).tobytes() + codes.numpy().tobytes()
    return decoded, xz(bytes(payload))


def load_nncodec():
    """``nncodec.nn``, installed here without its dependencies if missing (see the docstring)."""
    try:
        importlib.import_module("nncodec.extensions.deepCABAC")
    except ImportError:
        print(f"installing {NNCODEC} without its dependencies (builds a C++ extension, a few minutes)",
              file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", NNCODEC], check=True)
    # Imported by nncodec's package (some at module level, as in ``transforms.Compose([...])``)
    # but used only by its training and dataset code: stand-ins that accept anything.
    for name in UNUSED_BY_CODING:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _StandInModule(name)
    return importlib.import_module("nncodec.nn")


UNUSED_BY_CODING = ("torchvision", "torchvision.transforms", "torchvision.datasets", "torchvision.models", "cv2",
                    "h5py", "pandas", "torchmetrics", "sklearn", "sklearn.metrics", "ptflops")


class _StandInType(type):
    def __getattr__(cls, name):
        return _stand_in(name)


class _StandIn(metaclass=_StandInType):
    """Any attribute, any call, any subclass: what an unused import's module-level use needs."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _StandIn()

    def __getattr__(self, name):
        return _stand_in(name)


def _stand_in(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return _StandInType(name, (_StandIn,), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        return _stand_in(name)


def nncodec_coded(nn_module, state: dict[str, torch.Tensor], qp: int, workdir: str) -> tuple[dict, int]:
    arrays = {name: t.numpy().astype(np.float32) for name, t in state.items()}
    bitstream = nn_module.encode(arrays, args={"qp": qp, "use_dq": True, "sparsity": 0.0, "results": workdir,
                                               "verbose": False})
    decoded = nn_module.decode(bitstream, args={"verbose": False})
    return {name: torch.from_numpy(np.asarray(decoded[name], dtype=np.float32)).reshape(state[name].shape)
            for name in state}, len(bitstream)


def pareto(points: list[dict]) -> list[dict]:
    """The points that no smaller point beats on the validation error."""
    front, best = [], float("inf")
    for point in sorted(points, key=lambda p: (p["size_bytes"], p["validation_error"])):
        if point["validation_error"] < best:
            front.append(point)
            best = point["validation_error"]
    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5-relu", choices=model_names())
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation-examples", type=int, default=10_000)
    parser.add_argument("--threads", default=threads.AUTO)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-nncodec", action="store_true", help="leave NNCodec out")
    parser.add_argument("--out", required=True, help="the JSON summary to write")
    args = parser.parse_args()

    used_threads = threads.use_threads(args.threads)
    train, validation = carve(load(args.dataset, "train", args.data_dir), args.validation_examples, VALIDATION_SEED)
    test = load(args.dataset, "test", args.data_dir)
    model = create_model(args.model, seed=args.seed)
    start = time.perf_counter()
    train_plain(model, train, steps=args.steps, batch_size=128, lr=args.lr, seed=args.seed, log_every=1000)
    train_seconds = time.perf_counter() - start
    state = {name: t.detach().clone() for name, t in model.state_dict().items() if t.is_floating_point()}

    def scored(decoded: dict, data) -> float:
        trial = copy.deepcopy(model)
        trial.load_state_dict(decoded, strict=False)
        return 1 - accuracy(trial, data)

    def point(settings: dict, decoded: dict, size_bytes: int) -> dict:
        return {**settings, "size_bytes": size_bytes, "validation_error": round(scored(decoded, validation), 5),
                "_decoded": decoded}

    raw = b"".join(t.numpy().astype(np.float32).tobytes() for t in state.values())
    grids = {"float32 + lzma": [point({}, state, xz(raw))]}
    grids["pruning + uniform quantization + lzma"] = [
        point({"pruned_fraction": fraction, "bits": bits, "clip": clip}, *quantize(prune(state, fraction), bits, clip))
        for fraction in PRUNED_FRACTIONS for bits in QUANTIZER_BITS for clip in CLIP_FRACTIONS]
    if not args.no_nncodec:
        nn_module = load_nncodec()
        with tempfile.TemporaryDirectory() as workdir:
            grids["pruning + NNCodec"] = [
                point({"pruned_fraction": fraction, "qp": qp}, *nncodec_coded(nn_module, prune(state, fraction), qp,
                                                                             workdir))
                for fraction in PRUNED_FRACTIONS for qp in NNCODEC_QPS]

    baselines = {}
    for method, points in grids.items():
        front = pareto(points)
        for p in front:
            p["test_error"] = round(scored(p["_decoded"], test), 5)
        baselines[method] = {
            "chosen": [{k: v for k, v in p.items() if k != "_decoded"} for p in front],
            "trials": [{k: v for k, v in p.items() if k != "_decoded"} for p in points],
        }
    summary = {
        "model": args.model, "dataset": args.dataset, "steps": args.steps, "lr": args.lr, "seeds": [args.seed],
        "threads": used_threads, "validation_examples": args.validation_examples,
        "validation_seed": VALIDATION_SEED, "train_seconds": round(train_seconds, 1),
        "plain_test_error": round(scored(state, test), 5),
        "nncodec": None if args.no_nncodec else NNCODEC,
        "baselines": baselines,
        **provenance(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    files.write_json(args.out, summary, indent=1)
    for method, result in baselines.items():
        print(method, [(p["size_bytes"], p["test_error"]) for p in result["chosen"]])


if __name__ == "__main__":
    main()
