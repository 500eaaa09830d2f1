"""Recipes from YAML (prunekit.recipes.yamlfile, .stages): the configs' own field names, a lossless
round trip, and errors that carry the file's line number."""
from __future__ import annotations

import glob
import os

import pytest

from prunekit.config import PruneConfig
from prunekit.recipes import ExportStage, MeasureStage, PruneStage, Recipe, RecipeError, RecoverStage, SparsifyStage
from prunekit.recipes import load_recipe, parse_recipe
from prunekit.recipes.data import DataSpec
from prunekit.recovery.train import TrainConfig
from prunekit.sparsity.api import SparsityConfig

FULL = """\
seed: 3
stages:
  - prune:
      ratio: 0.4
      ratios: {"layer4.*": 0.2}
      round_to: 8
      ignore: [fc]
      scope: global
      criterion: l1
  - sparsify: {sparsity: 0.3, pattern: "2:4", ignore: [conv1]}
  - recover:
      epochs: 2
      lr: 1e-4
      max_steps: 5
      data: {source: random, batches: 4, batch_size: 2}
  - measure: {rounds: 2, repeats: 3, per_layer: true}
  - export: {onnx: true, exporter: legacy}
"""


def test_fields_are_the_configs_fields():
    r = parse_recipe(FULL)
    prune, sparsify, recover, measure, export = r.stages
    assert r.seed == 3
    assert prune == PruneStage(PruneConfig(ratio=0.4, ratios={"layer4.*": 0.2}, round_to=8, ignore=("fc",),
                                           scope="global", criterion="l1"))
    assert sparsify == SparsifyStage(SparsityConfig(sparsity=0.3, pattern="2:4", ignore=("conv1",)))
    assert recover == RecoverStage(TrainConfig(epochs=2, lr=1e-4, max_steps=5), DataSpec("random", 4, 2))
    assert recover.config.lr == 1e-4 and isinstance(recover.config.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert measure.latency_config.rounds == 2 and measure.per_layer is True
    assert export == ExportStage(onnx=True, exporter="legacy")


def test_every_config_field_is_accepted_and_round_trips():
    """Every field of PruneConfig, SparsityConfig and TrainConfig, written out by to_yaml, reads back equal."""
    r = Recipe((PruneStage(PruneConfig(ratios=(("fc", 0.1),), keep_outputs=("fc",), threshold=0.5), macs=None),
                PruneStage(PruneConfig(), macs=0.5), SparsifyStage(SparsityConfig(threshold=0.1, strict=True)),
                RecoverStage(TrainConfig(grad_clip=1.0, amp="bf16", optimizer="sgd"), DataSpec("fashion-mnist", samples=64)),
                MeasureStage(latency=False), ExportStage(check=False)), seed=7)
    text = r.to_yaml()
    for cls in (PruneConfig, SparsityConfig, TrainConfig):
        for f in cls.__dataclass_fields__:
            assert f"{f}:" in text, f
    assert parse_recipe(text) == r
    assert Recipe.from_dict(r.to_dict()) == r


def test_bare_stage_names_take_the_defaults():
    r = parse_recipe("stages: [prune, measure]")
    assert r.stages == (PruneStage(), MeasureStage())


@pytest.mark.parametrize("text, line, message", [
    ("stages:\n  - prune:\n      ratio: 1.5\n", 3, "prune.ratio: PruneConfig.ratio must be in [0.0, 1.0), got 1.5"),
    ("stages:\n  - prune:\n      round_to: 8\n      ratoi: 0.5\n", 4, "unknown field 'ratoi' (did you mean 'ratio'?)"),
    ("stages:\n  - prun: {}\n", 2, "unknown stage 'prun' (did you mean 'prune'?)"),
    ("stages:\n  - prune:\n      criterion: l3\n", 3, "PruneConfig.criterion 'l3' is not a registered criterion"),
    ("stages:\n  - sparsify:\n      pattern: 2-4\n", 3, "sparsify.pattern"),
    ("stages:\n  - prune:\n      scope: globl\n", 3, "prune.scope: scope must be 'local' or 'global'"),
    ("stages:\n  - prune:\n      ratio: '0.5'\n", 3, "must be a number, got str '0.5'"),
    ("stages:\n  - recover:\n      lr: 1e-3\n      epochs: 0\n", 4, "TrainConfig.epochs must be in [1, inf]"),
    ("stages:\n  - recover:\n      data: {source: imagenet}\n", 3, "supported: 'random'"),
    ("stages:\n  - recover:\n      lr: 1e-3\n", 2, "recover needs data: 'data: {source: random}'"),
    ("stages:\n  - recover:\n      data:\n        source: random\n        batchs: 3\n", 5,
     "unknown data fields 'batchs' (did you mean 'batches'?)"),
    ("stages:\n  - measure: {rounds: 0}\n", 2, "measure.rounds"),
    ("stages:\n  - export: {exporter: tracing}\n", 2, "exporter must be 'dynamo' or 'legacy'"),
    ("stages:\n  - prune: {ratio: 0.5\n", 3, "not valid YAML"),
    ("stages:\n  - prune: {}\n    sparsify: {}\n", 2, "a stage is one key"),
    ("seed: 1\nstage:\n  - prune: {}\n", 2, "unknown top-level key 'stage' (did you mean 'stages'?)"),
    ("seed: -1\nstages: [prune]\n", 1, "seed must be an integer >= 0"),
    ("stages: []\n", 1, "non-empty list"),
    ("stages:\n  - prune:\n      ratio: 0.5\n      ratio: 0.6\n", 4, "'ratio' given twice (first on line 3)"),
    ("", 1, "empty"),
])
def test_malformed_recipes_name_the_line(text, line, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, "r.yaml")
    assert e.value.line == line, str(e.value)
    assert str(e.value).startswith(f"r.yaml:{line}: ") and message in str(e.value), str(e.value)


def test_a_good_recipe_is_not_flagged():
    """Negative control for the table above: the same keys, spelled right and in range, parse."""
    parse_recipe("seed: 1\nstages:\n  - prune:\n      ratio: 0.5\n      round_to: 8\n"
                 "  - recover:\n      lr: 1e-3\n      data:\n        source: random\n        batches: 3\n")


def test_load_recipe_names_a_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(str(tmp_path / "none.yaml"))


EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "recipes", "*.yaml")))


def test_there_are_example_recipes():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_recipes_parse(path):
    r = load_recipe(path)
    assert r.stages and parse_recipe(r.to_yaml()) == r
