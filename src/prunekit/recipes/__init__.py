"""Recipes and the command line for the user's own model: which model (:mod:`.models`), its example
inputs (:mod:`.inputs`), YAML recipes of stages sharing the configs' field names (:mod:`.stages`,
:mod:`.yamlfile`), running them (:mod:`.run`) into an output folder that reloads exactly (:mod:`.folder`).

>>> from prunekit.recipes import parse_recipe
>>> parse_recipe("stages: [{prune: {ratio: 0.3}}]").stages[0].config.ratio
0.3
"""
from .folder import Loaded, check_reload, load_folder
from .models import ModelSpec, ModelSpecError
from .run import run_recipe
from .stages import ExportStage, MeasureStage, PruneStage, Recipe, RecoverStage, SparsifyStage
from .yamlfile import RecipeError, load_recipe, parse_recipe

__all__ = ["ExportStage", "Loaded", "MeasureStage", "ModelSpec", "ModelSpecError", "PruneStage", "Recipe",
           "RecipeError", "RecoverStage", "SparsifyStage", "check_reload", "load_folder", "load_recipe",
           "parse_recipe", "run_recipe"]
