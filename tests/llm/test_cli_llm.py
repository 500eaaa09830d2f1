"""`prunekit llm`: argument checks before any work, and a full run on a tiny saved model with a char tokenizer."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from prunekit.cli import main  # noqa: E402
from prunekit.llm.tiny import tiny_model  # noqa: E402

TEXT = ("Pruning removes weights that matter least. The pipeline visits one block at a time, "
        "collects the inputs of its linear layers and keeps the weights with the largest scores. ") * 12


def _char_tokenizer():
    chars = sorted(set(TEXT))
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    assert len(vocab) <= 128
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tiny_model("llama").save_pretrained(d / "model")
    _char_tokenizer().save_pretrained(d / "model")
    (d / "text.txt").write_text(TEXT)
    return d


def _args(folder, out, *extra):
    return ["llm", str(folder / "model"), "--calib", str(folder / "text.txt"), "--seq-len", "64",
            "--calib-windows", "8", "--eval-windows", "4", "--out", str(out), "--no-progress", *extra]


def test_wanda_run_writes_model_and_summary(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(folder, out, "--method", "wanda", "--sparsity", "0.5", "--save", "both")) == 0
    printed = capsys.readouterr().out
    assert "perplexity before" in printed and "perplexity after" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["calib_windows"] == 8 and s["eval_windows"] == 4 and s["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert s["ppl_before"] > 1 and s["ppl_after"] > 1 and s["ppl_after"] != s["ppl_before"]
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    w = back.model.layers[0].mlp.up_proj.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    from prunekit.llm.storage import load_compressed

    comp = load_compressed(out / "compressed")
    assert torch.equal(comp.model.layers[1].self_attn.q_proj.weight, back.model.layers[1].self_attn.q_proj.weight)
    from prunekit.llm.eval import perplexity

    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][: 4 * 64]).view(4, 64)
    assert perplexity(back, ids) == pytest.approx(s["ppl_after"], rel=1e-5)  # the saved model is the measured one


def test_pattern_and_low_memory(folder, tmp_path, capsys):
    out = tmp_path / "nm"
    assert main(_args(folder, out, "--method", "sparsegpt", "--pattern", "2:4", "--low-memory", "--refit",
                      "--admm", "--no-sequential", "--batch", "2")) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert (config["refit"], config["sequential"], config["batch"]) == (True, False, 2)
    assert config["admm"]["iters"] == 60  # AdmmConfig's defaults
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    w = back.model.layers[1].mlp.down_proj.weight.view(-1, 4)  # [rows * in / 4, 4]
    assert ((w != 0).sum(1) <= 2).all()  # 2:4 holds exactly
    assert json.loads((out / "summary.json").read_text())["ppl_after"] is None


@pytest.mark.parametrize("extra,message", [
    (("--method", "wanda", "--sparsity", "nan"), "--sparsity must be a number in [0, 1)"),
    (("--method", "wanda", "--sparsity", "1.0"), "--sparsity must be a number in [0, 1)"),
    (("--method", "wanda", "--sparsity", "-0.1"), "--sparsity must be a number in [0, 1)"),
    (("--method", "owl", "--sparsity", "0.5"), "--method 'owl' is not one of"),
    (("--method", "wanda", "--pattern", "4:2"), "--pattern"),
    (("--method", "wanda", "--sparsity", "0.5", "--group", "column"), "--group"),
    (("--method", "wanda", "--sparsity", "0.5", "--eval", "missing.txt"), "--eval 'missing.txt'"),
    (("--method", "magnitude", "--sparsity", "0.5", "--refit"), "--refit needs calibration"),
    (("--method", "wanda", "--sparsity", "0.5", "--batch", "0"), "--batch must be >= 1"),
    (("--method", "sparsegpt", "--sparsity", "0.5", "--admm"), "--admm compares"),
    (("--method", "wanda", "--sparsity", "0.5", "--refit", "--admm", "--group", "global"), "--admm chooses"),
])
def test_bad_arguments_fail_before_any_work(folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(_args(folder, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_out_and_model_checks(folder, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert main(_args(folder, f, "--method", "wanda", "--sparsity", "0.5")) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert main(["llm", str(tmp_path), "--method", "wanda", "--sparsity", "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --sparsity and --pattern together: argparse refuses
        main(_args(folder, tmp_path / "o", "--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4"))


def test_demo_still_listed():
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout and "llm" in r.stdout


def test_llm_recover_command(folder, tmp_path, capsys):
    """`prunekit llm-recover` (one process here; the same command runs under torchrun with FSDP)."""
    from prunekit.llm.sparse import sparsify_llm_

    student = transformers.AutoModelForCausalLM.from_pretrained(folder / "model")
    sparsify_llm_(student, None, "magnitude", 0.5, progress=False)
    student.save_pretrained(tmp_path / "student")
    _char_tokenizer().save_pretrained(tmp_path / "student")
    zeros = {k: v == 0 for k, v in student.state_dict().items() if ".layers." in k and k.endswith("proj.weight")}
    out = tmp_path / "recovered"
    args = ["llm-recover", "--student", str(tmp_path / "student"), "--teacher", str(folder / "model"),
            "--calib", str(folder / "text.txt"), "--seq-len", "64", "--windows", "4", "--steps", "3", "--lr", "0.01",
            "--out", str(out)]
    assert main(args) == 0
    assert "recovered (distill, 3 steps, 1 processes)" in capsys.readouterr().out
    back = transformers.AutoModelForCausalLM.from_pretrained(out)
    state = back.state_dict()
    assert all(torch.equal(state[k] == 0, z) for k, z in zeros.items())  # the 50% zeros kept
    assert any(not torch.equal(state[k], student.state_dict()[k]) for k in zeros)  # and the weights trained
    assert len(json.loads((out / "recover.json").read_text())["losses"]) == 3
    with pytest.raises(ValueError, match="not an empty folder"):  # negative control: never overwrite
        main(args)
