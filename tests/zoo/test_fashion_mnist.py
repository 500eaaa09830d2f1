import pytest
import torch

from prunekit.zoo import fashion_mnist as fm

try:
    fm.find_root()
    HAVE = True
except FileNotFoundError:
    HAVE = False


@pytest.mark.skipif(not HAVE, reason="dataset-fashion-mnist is not installed (make data)")
def test_fashion_mnist_loads_with_the_published_sizes():
    x, y = fm.load("test")
    assert x.shape == (10000, 28, 28) and x.dtype.name == "uint8"
    assert y.shape == (10000,) and sorted(set(y.tolist())) == list(range(10))
    assert (torch.bincount(torch.from_numpy(y)) == 1000).all()  # balanced classes
    batch = fm.to_rgb_batch(x[:4], size=32)
    assert batch.shape == (4, 3, 32, 32) and torch.isfinite(batch).all()


def test_missing_data_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "ROOTS", (str(tmp_path),))
    monkeypatch.setenv("PRUNEKIT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fm.find_root()
