import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.recovery import Distillation, TrainConfig, freeze, kd_loss, train, unfreeze


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))


def test_finetuning_lowers_the_loss():
    r = train(_net(), _data(), TrainConfig(epochs=5, lr=1e-2, progress=False))
    assert r.steps == 40 and r.world_size == 1
    assert sum(r.losses[-8:]) < 0.5 * sum(r.losses[:8])


def test_frozen_layers_are_unchanged_bit_for_bit():
    m = _net()
    frozen = freeze(m, ["0", "1"])
    assert frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train(m, _data(), TrainConfig(epochs=2, lr=1e-2, progress=False))
    after = m.state_dict()
    for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["3.weight"], after["3.weight"])
    assert unfreeze(m, ["1"]) == ["1.weight", "1.bias"] and m[1].weight.requires_grad
    with pytest.raises(ValueError, match="frozen"):
        freeze(m)
        train(m, _data(), TrainConfig(progress=False))


def test_kd_loss_is_zero_for_the_teacher_itself_and_distillation_pulls_the_student():
    t = torch.randn(4, 10)
    assert kd_loss(t, t).abs() < 1e-6
    teacher = _net().eval()
    student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(64, 8)

    def gap():
        student.eval()
        with torch.no_grad():
            return float(kd_loss(student(x), teacher(x)))

    g0 = gap()
    distill = Distillation(teacher, temperature=2.0, alpha=1.0, features={"2": "2"})
    train(student, _data(), TrainConfig(epochs=4, lr=1e-2, progress=False), distill=distill)
    assert gap() < 0.5 * g0
    assert distill.adapters["2"].proj.weight.shape == (32, 16)  # student 16 channels -> teacher 32


SCRIPT = textwrap.dedent("""
    import hashlib, os, sys, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from prunekit.recovery import TrainConfig, train
    torch.manual_seed(int(os.environ["RANK"]) + 1)  # different starts: DDP must sync them
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g); y = (x[:, 0] > 0).long()
    r = train(m, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), TrainConfig(epochs=2, progress=False))
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
    open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.txt"), "w").write(f"{digest} {r.steps} {r.world_size}")
    # torch 2.14.1 on this 2-core CI machine: about 1 run in 4 aborts in interpreter teardown, after training and
    # the write above ("terminate called without an active exception"); skip the teardown, not the check
    sys.stdout.flush(); os._exit(0)
""")


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = ((tmp_path / f"rank{i}.txt").read_text().split() for i in (0, 1))
    assert a == b  # same weights on both replicas
    assert a[1] == "8" and a[2] == "2"  # 128 samples / 2 ranks / batch 16 = 4 steps per epoch, 2 epochs
