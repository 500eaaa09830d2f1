"""Running recipes (prunekit.recipes.run, .folder) through ``prunekit.cli.main`` in this process: the
same plan as the same config in Python, recovery data, sparsify, --weights, and failures that leave
the output folder alone."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from prunekit import PruneConfig, prune_
from prunekit.cli import main
from prunekit.plan import Plan
from prunekit.recipes import check_reload, load_folder

QUICK = "  - measure: {rounds: 1, repeats: 1, warmup: 0}\n"

TINY = textwrap.dedent("""\
    import torch
    from torch import nn

    def build():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))

    def mlp():
        return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))

    def example_inputs():
        return torch.randn(2, 3, 8, 8)
    """)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return str(path)


def _recipe(tmp_path, body: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(body)
    return str(path)


def test_recipe_gives_the_same_plan_as_python(tmp_path):
    """The same PruneConfig, run from a recipe by the command line and by prune_ in Python: equal plans."""
    recipe = _recipe(tmp_path, "seed: 0\nstages:\n  - prune: {ratio: 0.4, round_to: 8, scope: global, "
                               "keep_outputs: [fc]}\n" + QUICK)
    out = tmp_path / "out"
    assert main(["prune", "torchvision:resnet18", "--recipe", recipe, "--input-shape", "1,3,32,32",
                 "--out", str(out)]) == 0
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = prune_(model, x, PruneConfig(ratio=0.4, round_to=8, scope="global", keep_outputs=("fc",)))
    saved = Plan.load(out / "plan.json")
    assert saved.to_dict() == result.plan.to_dict() and not saved.is_empty()
    loaded = load_folder(out)
    assert check_reload(loaded) == 0.0
    with torch.no_grad():  # the folder's weights are the weights Python pruned (same seed, same init)
        assert torch.equal(loaded.model(x), model.eval()(x))


def test_flags_make_the_same_plan_as_a_recipe(tmp_path, tiny):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    recipe = _recipe(tmp_path, "stages:\n  - prune: {ratio: 0.5, round_to: 4, criterion: l1}\n" + QUICK)
    base = ["prune", f"{tiny}:build"]
    assert main([*base, "--recipe", recipe, "--out", str(a)]) == 0
    assert main([*base, "--ratio", "0.5", "--round-to", "4", "--criterion", "l1", "--out", str(b)]) == 0
    assert main([*base, "--ratio", "0.5", "--round-to", "4", "--criterion", "random", "--out", str(c)]) == 0
    assert Plan.load(a / "plan.json").to_dict() == Plan.load(b / "plan.json").to_dict()
    assert Plan.load(c / "plan.json").to_dict() != Plan.load(b / "plan.json").to_dict()  # negative control


def test_several_stages_replay_in_order(tmp_path, tiny):
    """sparsify, then two prune stages: two plan files, replayed in order on a fresh model."""
    recipe = _recipe(tmp_path, "stages:\n  - sparsify: {sparsity: 0.5}\n  - prune: {ratio: 0.25}\n"
                               "  - prune: {ratio: 0.5}\n" + QUICK)
    out = tmp_path / "out"
    assert main(["prune", f"{tiny}:build", "--recipe", recipe, "--out", str(out)]) == 0
    loaded = load_folder(out)
    assert loaded.manifest["plans"] == ["plan.json", "plan-2.json"] and check_reload(loaded) == 0.0
    assert loaded.model[0].out_channels == 6  # 16 -> 12 -> 6
    assert [s["stage"] for s in json.loads((out / "summary.json").read_text())["stages"]] == [
        "sparsify", "prune", "prune", "measure"]


def test_recover_on_random_data_distills_from_the_unpruned_model(tmp_path, tiny):
    recipe = _recipe(tmp_path, "stages:\n  - prune: {ratio: 0.5}\n  - recover:\n      lr: 2e-3\n      epochs: 4\n"
                               "      data: {source: random, batches: 2, batch_size: 4}\n" + QUICK)
    out = tmp_path / "out"
    assert main(["prune", f"{tiny}:build", "--recipe", recipe, "--out", str(out)]) == 0
    stages = json.loads((out / "summary.json").read_text())["stages"]
    rec = next(s for s in stages if s["stage"] == "recover")
    losses = rec["losses"]  # 4 epochs of the same 2 batches: batch 0 is steps 0, 2, 4, 6
    assert rec["steps"] == 8 and losses[6] < 0.8 * losses[0] and losses[7] < 0.8 * losses[1], losses
    assert check_reload(load_folder(out)) == 0.0


def test_recover_on_fashion_mnist(tmp_path, tiny):
    from prunekit.zoo import fashion_mnist

    try:
        fashion_mnist.find_root()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    recipe = _recipe(tmp_path, "stages:\n  - prune: {ratio: 0.5}\n  - recover:\n      max_steps: 4\n"
                               "      data: {source: fashion-mnist, samples: 32, batch_size: 8}\n" + QUICK)
    out = tmp_path / "out"
    assert main(["prune", f"{tiny}:build", "--recipe", recipe, "--out", str(out)]) == 0
    rec = json.loads((out / "summary.json").read_text())["stages"][1]
    assert rec["stage"] == "recover" and rec["steps"] == 4


def test_fashion_mnist_on_a_model_that_takes_no_images_says_what_to_use(tmp_path, tiny, capsys):
    """Negative control: labelled images for an MLP on 12 features is refused, naming the alternative."""
    recipe = _recipe(tmp_path, "stages:\n  - recover:\n      data: {source: fashion-mnist}\n")
    out = tmp_path / "out"
    assert main(["prune", f"{tiny}:mlp", "--input-shape", "2,12", "--recipe", recipe, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "use source: random" in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_sparsify_2_of_4_reloads(tmp_path, tiny):
    out = tmp_path / "out"
    assert main(["sparsify", f"{tiny}:build", "--pattern", "2:4", "--out", str(out)]) == 0
    rec = json.loads((out / "summary.json").read_text())["stages"][0]
    assert rec["stage"] == "sparsify" and rec["skipped"] == {"0.weight": "input size 27 is not a multiple of 4"}
    assert abs(rec["per_tensor"]["3.weight"] - 0.5) < 1e-6
    loaded = load_folder(out)
    assert check_reload(loaded) == 0.0 and loaded.manifest["plans"] == []
    w = loaded.model[3].weight.detach().reshape(16, -1, 4)  # (out, groups of 4, 4)
    assert ((w != 0).sum(-1) <= 2).all()
    from prunekit.sparsity import load_sparse

    compressed = load_sparse(out / "model.sparse.safetensors")  # the same weights, smaller on disk
    assert all(torch.equal(compressed[k], v) for k, v in loaded.model.state_dict().items())
    assert (out / "model.sparse.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size


def test_weights_safetensors_and_state_dict_are_loaded(tmp_path, tiny):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_for_weights", tiny)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(123)
    source = mod.build().eval()
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("w.safetensors", "w.pt"):
        out = tmp_path / f"out-{name}"
        assert main(["measure", f"{tiny}:build", "--weights", str(tmp_path / name), "--no-latency"]) == 0
        assert main(["prune", f"{tiny}:build", "--weights", str(tmp_path / name), "--ratio", "0.5",
                     "--input-shape", "2,3,8,8", "--out", str(out)]) == 0
        expected = mod.build()
        expected.load_state_dict(source.state_dict())
        prune_(expected.eval(), x, ratio=0.5)
        with torch.no_grad():
            assert torch.equal(load_folder(out).model(x), expected(x))


def test_a_pickled_module_is_refused_not_unpickled(tmp_path, tiny, capsys):
    """Negative control: torch.save of a whole module needs unpickling arbitrary classes: refused, exit 2."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    assert main(["prune", f"{tiny}:build", "--weights", str(tmp_path / "module.pt"), "--ratio", "0.5",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_name_the_keys(tmp_path, tiny, capsys):
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    assert main(["measure", f"{tiny}:build", "--weights", str(tmp_path / "w.safetensors"), "--no-latency"]) == 2
    assert "unexpected ['bogus']" in capsys.readouterr().err


def test_a_failing_run_leaves_the_output_folder_as_it_was(tmp_path, tiny, capsys):
    out = tmp_path / "out"
    assert main(["prune", f"{tiny}:build", "--ratio", "0.5", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["prune", f"{tiny}:build", "--ratio", "0.5", "--ignore", "nosuchlayer", "--out", str(out)]) == 1
    assert "nosuchlayer" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "0.5", "--recipe", "RECIPE"], "--recipe excludes --ratio"),
    (["--input-shape", "1,0,8"], "every size must be >= 1"),
    (["--ratio", "1.5"], "must be in [0, 1), got 1.5"),
    (["--macs", "0"], "must be in (0, 1], got 0.0"),
    (["--criterion", "l3"], "unknown criterion 'l3'"),
    (["--weights", "nofile.safetensors"], "no such file"),
])
def test_usage_errors_exit_2_before_any_work(tmp_path, tiny, capsys, argv, message):
    recipe = _recipe(tmp_path, "stages: [prune]\n")
    argv = [recipe if a == "RECIPE" else a for a in argv]
    try:
        code = main(["prune", f"{tiny}:build", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_factory_is_a_usage_error(tmp_path, tiny, capsys):
    assert main(["prune", f"{tiny}:buidl", "--ratio", "0.5", "--out", str(tmp_path / "out")]) == 2
    assert "has no function 'buidl'; did you mean build" in capsys.readouterr().err


def test_a_file_model_without_inputs_asks_for_input_shape(tmp_path, capsys):
    (tmp_path / "m.py").write_text("from torch import nn\ndef f():\n    return nn.Linear(3, 3)\n")
    assert main(["measure", f"{tmp_path / 'm.py'}:f"]) == 2
    assert "give --input-shape" in capsys.readouterr().err
