"""Batches follow the model's device; train() moves each batch and runs mixed precision."""
from collections import namedtuple

import pytest
import torch
from torch import nn

from prunekit.devices import device_of, move_to


def test_move_to_handles_nested_batches_and_leaves_other_values():
    Pair = namedtuple("Pair", "x y")
    batch = {"ids": torch.ones(2, dtype=torch.long), "pair": Pair(torch.zeros(1), "label"), "list": [torch.ones(1), 3]}
    out = move_to(batch, "meta")
    assert out["ids"].device.type == "meta" and out["pair"].x.device.type == "meta" and out["pair"].y == "label"
    assert isinstance(out["pair"], Pair) and out["list"][1] == 3 and out["list"][0].device.type == "meta"
    assert batch["ids"].device.type == "cpu"  # not in place


def test_device_of_reads_parameters_then_buffers():
    assert device_of(nn.Linear(2, 2).to("meta")).type == "meta"
    assert device_of(nn.BatchNorm1d(2, affine=False).to("meta")).type == "meta"
    assert device_of(nn.ReLU()).type == "cpu"


def test_train_moves_every_batch_to_the_models_device(monkeypatch):
    import sys

    import prunekit.recovery  # noqa: F401  (the package exports a function named train)
    train_mod = sys.modules["prunekit.recovery.train"]

    seen = []
    real = train_mod.move_to
    monkeypatch.setattr(train_mod, "move_to", lambda b, d: seen.append(torch.device(d)) or real(b, d))
    model = nn.Linear(4, 3)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    train_mod.train(model, data, train_mod.TrainConfig(progress=False))
    assert seen == [torch.device("cpu")] * 3


def test_train_with_bf16_autocast_lowers_the_loss():
    from prunekit.recovery import TrainConfig, train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    dtypes = []
    model[2].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    res = train(model, [(x, y)] * 30, TrainConfig(lr=1e-2, amp="bf16", progress=False))
    assert dtypes[0] == torch.bfloat16 and model[0].weight.dtype == torch.float32
    assert res.losses[-1] < 0.7 * res.losses[0]
    with pytest.raises(ValueError, match="TrainConfig.amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(TypeError, match="TrainConfig.lr"):
        TrainConfig(lr="1e-3")
