"""``prunekit prune`` in a subprocess on each kind of MODEL (torchvision, timm, a Hugging Face folder,
file.py:factory): each folder reloads exactly (plan replayed on a fresh instance + weights) and has a
report with at least two plots."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.recipes import check_reload, load_folder

RECIPE = ("stages:\n  - prune: {ratio: 0.5, round_to: 4}\n"
          "  - recover: {max_steps: 2, data: {source: random, batches: 2, batch_size: 2}}\n"
          "  - measure: {rounds: 2, repeats: 2, warmup: 1}\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_net_py) -> dict[str, Path]:
    """``prunekit prune MODEL --recipe ... --out ...`` for the four kinds of MODEL, through
    ``prunekit.cli.main`` in ONE subprocess (one interpreter start instead of four: the imports of
    torch, torchvision, timm and transformers are most of the time)."""
    transformers = pytest.importorskip("transformers")
    tmp = tmp_path_factory.mktemp("cli_models")
    (tmp / "recipe.yaml").write_text(RECIPE)
    (tmp / "net.py").write_text(small_net_py)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp / "bert")
    vit = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64)
    transformers.ViTModel(vit).save_pretrained(tmp / "vit")
    models = {"torchvision": ["torchvision:resnet18", "--input-shape", "1,3,32,32"],
              "timm": ["timm:test_efficientnet"],
              "hf": [str(tmp / "bert")],
              "hf_vision": [str(tmp / "vit")],
              "file": [f"{tmp / 'net.py'}:build", "--input-shape", "2,3,8,8"]}
    argvs = [["prune", *m, "--recipe", str(tmp / "recipe.yaml"), "--out", str(tmp / kind)] for kind, m in models.items()]
    driver = ("import json, sys\nfrom prunekit.cli import main\n"
              f"codes = [main(a) for a in json.loads({json.dumps(json.dumps(argvs))})]\nprint('codes', codes)\n"
              "sys.exit(max(codes))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("done:") == len(models) and "\r" not in r.stdout + r.stderr  # plain lines in a log, no bar redraws
    assert "recovery: 2/2 (100%)" in r.stderr
    return {kind: tmp / kind for kind in models} | {"bert": tmp / "bert"}


def _check(out: Path, inputs: str) -> dict:
    loaded = load_folder(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run that saved the outputs (OMP_NUM_THREADS=1): another thread count
    try:                      # splits the CPU kernels' sums differently (2.4e-7 on ViT with 2 threads)
        assert check_reload(loaded) == 0.0  # plan replay + weights -> the very outputs the run saved
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "summary.json").read_text())
    prune = summary["stages"][0]
    assert prune["stage"] == "prune" and prune["after"]["macs"] < prune["before"]["macs"]
    assert inputs in summary["inputs"]
    page = (out / "report.html").read_text()
    plots = re.findall(r'<img src="([^"]+\.png)"', page)
    assert len(plots) >= 2 and all((out / p).stat().st_size > 1000 for p in plots), plots
    assert json.loads((out / "prunekit.json").read_text())["plans"] == ["plan.json"]
    recover = summary["stages"][1]
    assert recover["stage"] == "recover" and recover["steps"] == 2  # the recovered weights are what reloads
    return summary


def test_torchvision_model(runs):
    _check(runs["torchvision"], "(1, 3, 32, 32) (--input-shape)")


def test_timm_model_takes_its_input_size_from_its_config(runs):
    _check(runs["timm"], "(1, 3, 160, 160) (timm pretrained_cfg input_size)")


def test_hugging_face_folder(runs):
    _check(runs["hf"], "input_ids=(1, 16) (config.json vocab_size, 16 tokens)")
    assert (runs["hf"] / "source_config.json").is_file()  # rebuilt from the saved config, not the source folder


def test_hugging_face_vision_folder_takes_image_size_from_its_config(runs):
    _check(runs["hf_vision"], "pixel_values=(1, 3, 16, 16) (config.json image_size/num_channels)")


def test_file_factory_model(runs):
    _check(runs["file"], "(2, 3, 8, 8)")


def test_a_changed_weight_file_is_caught_by_the_reload_check(runs, tmp_path):
    """Negative control for check_reload: a folder whose weights were changed after the run reloads,
    but its outputs no longer equal the saved ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path / "copy"
    shutil.copytree(runs["file"], out)
    state = load_file(str(out / "model.safetensors"))
    state["7.bias"] = state["7.bias"] + 1e-3
    save_file(state, str(out / "model.safetensors"))
    assert check_reload(load_folder(out)) > 5e-4
