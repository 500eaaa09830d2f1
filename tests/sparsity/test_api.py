import pytest
import torch
from torch import nn

from prunekit.schedules import Cubic
from prunekit.sparsity import GradualPruner, SparsityConfig, mark_zeros_, masks_of, sparsify_


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        m[2].weight.mul_(10)  # the second layer is larger in magnitude
    return m


def test_local_sparsity_is_per_tensor():
    r = sparsify_(_model(), sparsity=0.5)
    assert r.per_tensor == {"0.weight": 0.5, "2.weight": 0.5}


def test_global_sparsity_takes_more_from_the_smaller_layer():
    r = sparsify_(_model(), sparsity=0.5, scope="global")
    assert r.overall == pytest.approx(0.5, abs=1e-3)
    assert r.per_tensor["0.weight"] > 0.6 and r.per_tensor["2.weight"] < 0.2


def test_nm_pattern_through_the_one_call():
    m = _model()
    sparsify_(m, pattern="2:4", finalize_now=True)
    for lin in (m[0], m[2]):
        assert ((lin.weight.reshape(lin.weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all()


def test_ignore_and_config_round_trip():
    cfg = SparsityConfig(sparsity=0.8, scope="global", ignore=("2",), pattern="unstructured")
    assert SparsityConfig.from_json(cfg.to_json()) == cfg
    r = sparsify_(_model(), cfg)
    assert set(r.masks) == {"0.weight"}
    with pytest.raises(ValueError):
        SparsityConfig(pattern="4:2")


def test_mark_zeros_counts_existing_zeros():
    m = _model()
    with torch.no_grad():
        m[0].weight[:4] = 0
    r = mark_zeros_(m)
    assert r.per_tensor["0.weight"] == pytest.approx(4 / 32)
    assert r.per_tensor["2.weight"] == 0.0


def test_gradual_pruner_follows_the_cubic_schedule_and_masks_only_grow():
    m = _model()
    sched = Cubic(0.0, 0.8, begin_step=0, end_step=10, frequency=2)
    pruner = GradualPruner(m, sched)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    seen, prev = [], None
    for _ in range(12):
        opt.zero_grad()
        m(torch.randn(4, 16)).pow(2).mean().backward()
        opt.step()
        seen.append(pruner.step())
        masks = masks_of(m)
        if masks:
            actual = sum(int((~v).sum()) for v in masks.values()) / sum(v.numel() for v in masks.values())
            assert actual == pytest.approx(seen[-1], abs=0.01)
            if prev is not None:
                assert all((~prev[k] <= ~masks[k]).all() for k in masks)  # pruned stays pruned
            prev = {k: v.clone() for k, v in masks.items()}
    assert seen == [pytest.approx(sched.sparsity_at(t)) for t in range(1, 13)]
    pruner.finalize()
    assert not masks_of(m)


def test_config_validation_and_json_refusals():
    with pytest.raises(ValueError, match="sparsity must be in"):
        SparsityConfig(sparsity=1.0)
    assert SparsityConfig(sparsity=0.0).sparsity == 0.0
    for bad in ("0:4", "4:4", "5:4", "2-4"):
        with pytest.raises(ValueError, match="pattern must be"):
            SparsityConfig(pattern=bad)
    assert SparsityConfig(pattern="3:4").nm == (3, 4)
    assert SparsityConfig(pattern="1:4").nm == (1, 4)
    with pytest.raises(ValueError, match="unknown SparsityConfig fields"):
        SparsityConfig.from_json('{"sparsity": 0.5, "colour": "red"}')


def test_summary_lists_every_tensor():
    m = _model()
    result = sparsify_(m, sparsity=0.5)
    text = result.summary()
    assert text.splitlines()[0].startswith(f"{len(result.masks)} tensors, overall sparsity 0.5")
    for name, s in result.per_tensor.items():
        assert f"  {name}: {s:.3f}" in text


def test_a_given_criterion_is_the_one_used():
    from prunekit.criteria import Criterion
    from prunekit.sparsity.api import compute_masks

    class Smallest(Criterion):  # inverse magnitude: keeps the smallest weights
        name = "smallest"

        def score_weights_of(self, name, p):
            return -p.detach().abs()

    m = _model()
    masks = compute_masks(m, SparsityConfig(sparsity=0.5), criterion=Smallest())
    for name, mask in masks.items():
        w = m.get_parameter(name).detach().abs()
        assert w[mask].max() <= w[~mask].min()  # the kept weights are the small ones


def test_gradual_pruner_state_round_trips():
    m = _model()
    pruner = GradualPruner(m, Cubic(0.0, 0.8, begin_step=0, end_step=4, frequency=1))
    for _ in range(2):
        pruner.step()
    state = pruner.state_dict()
    assert state["step_count"] == 2 and state["current"] == pytest.approx(pruner.current) and state["current"] > 0
    assert set(state["masks"]) == set(pruner.names)
    other = GradualPruner(_model(), Cubic(0.0, 0.8, begin_step=0, end_step=4, frequency=1))
    other.load_state_dict(state)
    assert other.step_count == 2 and other.current == pruner.current


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("overrides, error, match", [
    ({"threshold": float("nan")}, ValueError, "SparsityConfig.threshold must be a finite number"),
    ({"sparsity": "0.5"}, TypeError, "SparsityConfig.sparsity must be a number, got str"),
    ({"sparsity": float("nan")}, ValueError, "SparsityConfig.sparsity"),
    ({"sparsity": True}, TypeError, "SparsityConfig.sparsity"),
    ({"ignore": ["typo"]}, ValueError, "ignore names modules that are not in the model: 'typo'"),
    ({"ignore": ["2.weight"]}, ValueError, "not in the model"),
    ({"ignore": [3]}, TypeError, "SparsityConfig.ignore must hold strings"),
])
def test_bad_settings_raise_naming_the_field_and_change_nothing(overrides, error, match):
    m = _model()
    before = _snapshot(m)
    with pytest.raises(error, match=match):
        sparsify_(m, **overrides)
    assert not masks_of(m)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_ignore_suggests_the_close_name():
    with pytest.raises(ValueError, match="did you mean '2'"):
        sparsify_(_model(), ignore=["2 "])


def test_nm_on_a_real_resnet_skips_layers_it_cannot_fit_and_says_so():
    import torchvision

    net = torchvision.models.resnet18()
    with pytest.warns(UserWarning, match="left dense"):
        r = sparsify_(net, pattern="2:4")
    assert r.skipped == {"conv1.weight": "input size 147 is not a multiple of 4"}
    assert "conv1.weight: left dense" in r.summary()
    assert "conv1.weight" not in r.masks and len(r.masks) == 20
    for name, mask in r.masks.items():
        blocks = mask.reshape(mask.shape[0], -1, 4)
        assert (blocks.sum(-1) == 2).all(), name
    with pytest.raises(ValueError, match="strict=True.*conv1.weight"):
        sparsify_(torchvision.models.resnet18(), pattern="2:4", strict=True)


def test_masked_checkpoint_loads_into_a_plain_copy_and_resumes_gradual_pruning():
    from prunekit.sparsity import load_state_dict_

    sched = lambda: Cubic(0.0, 0.8, begin_step=0, end_step=6, frequency=1)  # noqa: E731
    m = _model()
    pruner = GradualPruner(m, sched())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))

    def train_step(model, optimizer, p):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        p.step()

    for _ in range(3):
        train_step(m, opt, pruner)
    model_state, pruner_state = _snapshot(m), pruner.state_dict()
    assert any(k.endswith("parametrizations.weight.original") for k in model_state)

    plain = _model()  # a fresh model with no masks: the masks come from the checkpoint
    load_state_dict_(plain, model_state)
    assert torch.equal(plain(x), m(x)) and all(torch.equal(masks_of(plain)[k], v) for k, v in masks_of(m).items())

    fresh = _model()
    resumed = GradualPruner(fresh, sched())
    resumed.load_checkpoint(model_state, pruner_state)
    assert resumed.step_count == 3
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1)
    for _ in range(4):
        train_step(m, opt, pruner)
        train_step(fresh, opt2, resumed)
    assert torch.equal(fresh(x), m(x))
    assert resumed.current == pruner.current == pytest.approx(0.8)
    resumed.finalize()
    assert set(fresh.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    # negative control: a checkpoint whose masks were dropped is refused, not loaded half-right
    no_masks = {k: v for k, v in model_state.items() if not k.endswith(".mask")}
    with pytest.raises(ValueError, match="without their masks"):
        load_state_dict_(_model(), no_masks)
