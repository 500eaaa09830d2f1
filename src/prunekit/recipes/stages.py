"""A recipe's stages, each built from the fields of the config it runs: ``prune`` takes
:class:`~prunekit.PruneConfig`'s fields (and ``macs``), ``sparsify`` :class:`~prunekit.sparsity.SparsityConfig`'s,
``recover`` :class:`~prunekit.recovery.train.TrainConfig`'s (and ``data``), ``measure``
:class:`~prunekit.measure.latency.LatencyConfig`'s (and ``latency``, ``per_layer``), ``export``
its own few. The configs validate themselves; nothing here repeats their checks.

>>> Recipe.from_dict({"stages": [{"prune": {"ratio": 0.5, "round_to": 8}}]}).stages[0].config.round_to
8
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

from ..config import PruneConfig
from ..measure.latency import LatencyConfig
from ..recovery.train import TrainConfig
from ..sparsity.api import SparsityConfig
from ..validate import number
from .data import DataSpec

NAMES = ("prune", "sparsify", "recover", "measure", "export")


def config_fields(cls: type) -> list[str]:
    """The field names of a config dataclass, in order."""
    return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class PruneStage:
    """Structured pruning: ``prune_(model, example, config, macs=macs)``."""

    config: PruneConfig = field(default_factory=PruneConfig)
    macs: float | None = None  # prune to at most this fraction of the MACs (searches config.ratio)
    EXTRA: ClassVar[tuple[str, ...]] = ("macs",)

    def __post_init__(self) -> None:
        if self.macs is not None:
            number("macs", self.macs, lo=0.0, hi=1.0, lo_open=True)

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "PruneStage":
        rest = {k: v for k, v in d.items() if k not in cls.EXTRA}
        return cls(PruneConfig(**rest), d.get("macs"))

    def to_fields(self) -> dict[str, Any]:
        return {**self.config.to_dict(), **({"macs": self.macs} if self.macs is not None else {})}

    @staticmethod
    def known() -> list[str]:
        return config_fields(PruneConfig) + list(PruneStage.EXTRA)


@dataclass(frozen=True)
class SparsifyStage:
    """Parameter pruning: ``sparsify_(model, config, finalize_now=True)`` (zeros baked into the weights)."""

    config: SparsityConfig = field(default_factory=SparsityConfig)

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "SparsifyStage":
        return cls(SparsityConfig(**d))

    def to_fields(self) -> dict[str, Any]:
        import json

        return json.loads(self.config.to_json())

    @staticmethod
    def known() -> list[str]:
        return config_fields(SparsityConfig)


@dataclass(frozen=True)
class RecoverStage:
    """Recovery: ``train(model, batches, config)`` on the batches ``data`` describes."""

    config: TrainConfig = field(default_factory=TrainConfig)
    data: DataSpec = field(default_factory=DataSpec)

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "RecoverStage":
        rest = {k: v for k, v in d.items() if k != "data"}
        config = TrainConfig(**rest)
        if "data" not in d:
            raise ValueError("recover needs data: 'data: {source: random}' (distillation from the unpruned model on "
                             "random inputs shaped like the example, any model) or 'data: {source: fashion-mnist}' "
                             "(labelled images, image classifiers)")
        data = d["data"]
        if isinstance(data, str):
            data = {"source": data}
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping (source: random | fashion-mnist, ...), got {data!r}")
        extra = set(data) - set(config_fields(DataSpec))
        if extra:
            import difflib

            known = config_fields(DataSpec)
            hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, known, n=1)) else "")
                     for k in sorted(extra)]
            raise ValueError(f"unknown data fields {', '.join(hints)}; known: {', '.join(known)}")
        return cls(config, DataSpec(**data))

    def to_fields(self) -> dict[str, Any]:
        return {**{f: getattr(self.config, f) for f in config_fields(TrainConfig)}, "data": self.data.to_dict()}

    @staticmethod
    def known() -> list[str]:
        return config_fields(TrainConfig) + ["data"]


@dataclass(frozen=True)
class MeasureStage:
    """Measure the model as it is now (params, MACs, file size, peak memory; latency paired with the
    unpruned model in alternating rounds). The last one also sets how the report measures."""

    latency_config: LatencyConfig = field(default_factory=LatencyConfig)
    latency: bool = True
    per_layer: bool = False
    EXTRA: ClassVar[tuple[str, ...]] = ("latency", "per_layer")

    def __post_init__(self) -> None:
        for name in self.EXTRA:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "MeasureStage":
        rest = {k: v for k, v in d.items() if k not in cls.EXTRA}
        for k, v in rest.items():
            number(f"LatencyConfig.{k}", v, integer=True)
        return cls(LatencyConfig(**rest), **{k: d[k] for k in cls.EXTRA if k in d})

    def to_fields(self) -> dict[str, Any]:
        return {**self.latency_config.to_dict(), "latency": self.latency, "per_layer": self.per_layer}

    @staticmethod
    def known() -> list[str]:
        return config_fields(LatencyConfig) + list(MeasureStage.EXTRA)


@dataclass(frozen=True)
class ExportStage:
    """ONNX export of the final model, checked against ONNX Runtime (``prunekit.io.export_onnx``)."""

    onnx: bool = True
    opset: int = 18
    exporter: str = "dynamo"
    check: bool = True

    def __post_init__(self) -> None:
        for name in ("onnx", "check"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        number("opset", self.opset, lo=7, integer=True)
        if self.exporter not in ("dynamo", "legacy"):
            raise ValueError(f"exporter must be 'dynamo' or 'legacy', not {self.exporter!r}")

    @classmethod
    def from_fields(cls, d: Mapping[str, Any]) -> "ExportStage":
        return cls(**d)

    def to_fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in config_fields(ExportStage)}

    @staticmethod
    def known() -> list[str]:
        return config_fields(ExportStage)


STAGES: dict[str, type] = {"prune": PruneStage, "sparsify": SparsifyStage, "recover": RecoverStage,
                           "measure": MeasureStage, "export": ExportStage}


@dataclass(frozen=True)
class Recipe:
    """Stages run in order on one model, and the seed for everything random (example inputs,
    random recovery data)."""

    stages: tuple = ()
    seed: int = 0

    def __post_init__(self) -> None:
        number("seed", self.seed, lo=0, integer=True)
        for s in self.stages:
            if type(s) not in STAGES.values():
                raise TypeError(f"not a recipe stage: {s!r}")

    @staticmethod
    def stage_name(stage: Any) -> str:
        return next(n for n, c in STAGES.items() if type(stage) is c)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "stages": [{self.stage_name(s): s.to_fields()} for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """From plain data (no line numbers; :func:`prunekit.recipes.load_recipe` gives them)."""
        from .yamlfile import parse_recipe
        import yaml

        return parse_recipe(yaml.safe_dump(dict(d), sort_keys=False))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def find(self, kind: type) -> list:
        return [s for s in self.stages if isinstance(s, kind)]
