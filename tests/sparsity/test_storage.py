import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunekit.sparsity import load_sparse, save_sparse, sparsify_


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))


def test_90_percent_sparse_file_is_at_most_0_14_of_dense(tmp_path):
    model = _mlp()
    sparsify_(model, sparsity=0.9, finalize_now=True)
    dense_path, sparse_path = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
    enc = save_sparse(model, sparse_path)
    ratio = os.path.getsize(sparse_path) / os.path.getsize(dense_path)
    assert ratio <= 0.14, ratio
    assert enc["0.weight"] == "bitmask" and enc["0.bias"] == "dense"
    loaded = load_sparse(sparse_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    fresh = _mlp()
    fresh.load_state_dict(loaded)
    x = torch.randn(4, 256)
    assert torch.equal(fresh(x), model(x))


def test_very_sparse_tensors_use_indices_and_round_trip(tmp_path):
    t = torch.zeros(300, 300)
    t[torch.randint(0, 300, (50,)), torch.randint(0, 300, (50,))] = torch.randn(50)
    small = torch.zeros(10, 10, dtype=torch.float16)
    small[3, 4] = 1.5
    enc = save_sparse({"big": t, "small": small, "scalar": torch.tensor(2.0)}, tmp_path / "s.safetensors")
    assert enc["big"] == "index"
    back = load_sparse(tmp_path / "s.safetensors")
    assert torch.equal(back["big"], t) and torch.equal(back["small"], small) and back["small"].dtype == torch.float16
    assert back["scalar"].item() == 2.0


def test_failed_save_leaves_no_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(Exception):
        save_sparse({"a::b": torch.ones(2)}, path)
    assert not path.exists() and not [p for p in tmp_path.iterdir()]
    with pytest.raises(Exception):
        save_sparse({"w": torch.ones(2), "v": object()}, path)  # type: ignore[dict-item]
    assert not [p for p in tmp_path.iterdir()]


def test_plain_safetensors_file_is_refused(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a prunekit sparse file"):
        load_sparse(tmp_path / "plain.safetensors")


def test_save_leaves_only_the_target_file(tmp_path, monkeypatch):
    """The temp file is renamed on success and removed on failure -- including a failure after it
    was written (the rename itself) and one inside the safetensors write."""
    import prunekit.sparsity.storage as storage

    save_sparse({"w": torch.ones(4)}, tmp_path / "ok.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]

    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_text("x")  # os.replace onto a non-empty directory fails after the write
    with pytest.raises(OSError):
        save_sparse({"w": torch.ones(4)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors", "taken"]
    assert [p.name for p in target.iterdir()] == ["keep"]

    written = []

    def failing_save_file(payload, path, metadata=None):
        save_file(payload, path, metadata=metadata)  # a partial file exists when the failure comes
        written.append(path)
        raise RuntimeError("disk full")

    monkeypatch.setattr(storage, "save_file", failing_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sparse({"w": torch.ones(4)}, tmp_path / "new.safetensors")
    assert len(written) == 1 and not os.path.exists(written[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors", "taken"]


@pytest.mark.parametrize("numel", [65536, 65537])
def test_index_encoding_at_the_uint16_boundary(tmp_path, numel):
    """Positions fit uint16 up to 65536 elements; one more needs uint32 (the last position is 65536)."""
    t = torch.zeros(numel)
    t[[0, 1000, numel - 1]] = torch.tensor([1.0, -2.0, 3.0])
    enc = save_sparse({"t": t}, tmp_path / "b.safetensors")
    assert enc["t"] == "index"
    assert torch.equal(load_sparse(tmp_path / "b.safetensors")["t"], t)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open descriptors")
def test_save_closes_its_descriptors(tmp_path):
    save_sparse({"w": torch.ones(4)}, tmp_path / "warm.safetensors")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(3):
        save_sparse({"w": torch.ones(4)}, tmp_path / f"{i}.safetensors")
    assert len(os.listdir("/proc/self/fd")) == before
