"""llm/recover.py under torchrun with FSDP: 2 CPU processes (gloo) give what one process gives on the same batches."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from prunekit.llm.recover import RecoverConfig, recover_  # noqa: E402

WORKER = textwrap.dedent('''
    import sys, torch, transformers
    sys.path.insert(0, {tests!r})
    from test_fsdp import build, CONFIGS
    from prunekit.llm.recover import recover_
    out = {{}}
    for name, cfg in CONFIGS.items():
        teacher, student, windows = build()
        res = recover_(student, windows, cfg, teacher=teacher)
        if res.state_dict is not None:
            out[name] = dict(res.state_dict, __losses__=torch.tensor(res.losses), __world__=torch.tensor(res.world_size))
    if out:
        torch.save(out, {path!r})
''')

CONFIGS = {
    "distill": RecoverConfig(method="distill", steps=3, lr=3e-3, batch_size=2, hidden_weight=0.5, progress=False),
    "lora": RecoverConfig(method="lora", steps=3, lr=1e-2, batch_size=2, progress=False),
}


def build():
    """Teacher, a 50%-sparse student (per tensor, by magnitude) and 6 windows, identical in every process."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    teacher = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for mod in student.model.layers.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    windows = torch.randint(0, 64, (6, 12), generator=torch.Generator().manual_seed(1))  # [n, T]
    return teacher, student, windows


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    script, path = tmp / "worker.py", tmp / "out.pt"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__), path=str(path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(path)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp_two_processes_match_one(two_process_result, name):
    got = two_process_result[name]
    assert int(got.pop("__world__")) == 2
    losses = got.pop("__losses__")
    teacher, student, windows = build()
    res = recover_(student, windows, CONFIGS[name], teacher=teacher)  # one process, same global batches
    assert res.world_size == 1
    torch.testing.assert_close(losses, torch.tensor(res.losses), rtol=1e-4, atol=1e-5)
    want = student.state_dict()
    assert set(got) == set(want), set(got) ^ set(want)  # plain names: no FSDP or peft prefixes, LoRA merged
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
        if ".layers." in k and k.endswith("proj.weight"):
            assert torch.equal(got[k] == 0, v == 0), k  # the 50% zero pattern kept under FSDP too
            assert (v == 0).float().mean() >= 0.5


def test_negative_control_other_batches_differ(two_process_result):
    """The comparison is sensitive: one process with half the batch (other windows per step) does not match."""
    got = two_process_result["distill"]
    teacher, student, windows = build()
    cfg = RecoverConfig(method="distill", steps=3, lr=3e-3, batch_size=1, hidden_weight=0.5, progress=False)
    recover_(student, windows, cfg, teacher=teacher)
    w = student.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert not torch.allclose(got["model.layers.0.mlp.up_proj.weight"], w, rtol=1e-4, atol=1e-5)
