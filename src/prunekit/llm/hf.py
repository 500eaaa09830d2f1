"""The Hugging Face round trip of a structurally pruned decoder LLM.

- :func:`rewrite_config_` writes the pruned sizes into ``model.config`` (``intermediate_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_size``,
  ``num_hidden_layers``, bias flags, and each family's equivalents) when one config can express them:
  a model built from the new config must have exactly the pruned model's tensor names and shapes.
- :func:`save_pretrained` saves through ``model.save_pretrained`` when the config expresses the model
  (plain ``AutoModelForCausalLM.from_pretrained`` then reloads it); otherwise (per-layer sizes) it
  writes the config the plan starts from and the plan(s) to ``prunekit.json``, the weights under a name
  the plain loader does not read, and a ``config.json`` whose ``model_type`` transformers refuses with
  a message naming :func:`from_pretrained` -- never a silent re-initialisation.
- :func:`from_pretrained` loads either kind: it rebuilds the model from the saved config, replays the
  plan(s) and loads the weights (strict: every tensor must match).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..plan import Plan, apply_plan
from .structured import BLOCKS_PATH, _private_configs, blocks, family, model_units

PRUNEKIT_FILE = "prunekit.json"
WEIGHTS_NAME = "prunekit.safetensors"
REFUSED_MODEL_TYPE = "prunekit-per-layer-sizes--load-with-prunekit.llm.from_pretrained"
FORMAT = 1


def _sizes(model: nn.Module) -> dict[str, Any]:
    """Per-layer (query heads, KV heads, head_dim, neurons), hidden size and layer count of the model now."""
    units = model_units(model)
    emb = model.get_input_embeddings().weight
    return {"layers": [(u.n_q, u.n_kv, u.head_dim, u.mlp.size) for u in units], "hidden": emb.shape[1],
            "n_layers": len(units)}


def _candidate(model: nn.Module) -> Any | None:
    """``model.config`` with the model's present sizes, or None when the layers differ."""
    fam = family(model)
    s = _sizes(model)
    if len(set(s["layers"])) != 1:
        return None
    n_q, n_kv, hd, inter = s["layers"][0]
    cfg = copy.deepcopy(model.config)
    d, L = s["hidden"], s["n_layers"]
    if fam in ("llama", "mistral", "qwen2", "phi3"):
        cfg.update({"intermediate_size": inter, "num_attention_heads": n_q, "num_key_value_heads": n_kv,
                    "head_dim": hd, "hidden_size": d, "num_hidden_layers": L})
        layer = blocks(model)[0]
        if fam in ("llama", "mistral") or hasattr(cfg, "mlp_bias"):
            if hasattr(cfg, "mlp_bias") or getattr(layer.mlp.down_proj, "bias", None) is not None:
                cfg.mlp_bias = getattr(layer.mlp.down_proj, "bias", None) is not None
            if hasattr(cfg, "attention_bias") or getattr(layer.self_attn.o_proj, "bias", None) is not None:
                cfg.attention_bias = getattr(layer.self_attn.o_proj, "bias", None) is not None
    elif fam == "gpt2":
        cfg.update({"n_inner": inter, "n_head": n_q, "n_embd": d, "n_layer": L})
    elif fam == "opt":
        cfg.update({"ffn_dim": inter, "num_attention_heads": n_q, "hidden_size": d, "num_hidden_layers": L})
    elif fam == "gpt_neox":
        cfg.update({"intermediate_size": inter, "num_attention_heads": n_q, "hidden_size": d, "num_hidden_layers": L})
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) != L:
        return None
    return cfg


def _shapes_from_config(cfg: Any) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def rewrite_config_(model: nn.Module) -> bool:
    """Write the pruned sizes into ``model.config`` if one config expresses the model (see the module
    doc); biases the new config implies (e.g. ``mlp_bias`` after FLAP compensation on ``down_proj``)
    are added to the model as zeros. Returns False, changing nothing, for per-layer sizes."""
    cfg = _candidate(model)
    if cfg is None:
        return False
    try:
        want = _shapes_from_config(cfg)
    except ValueError:  # the family refuses these sizes (e.g. GPT-2: hidden size not divisible by the heads)
        return False
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    extra = set(want) - set(have)
    if set(have) - set(want) or any(want[k] != have[k] for k in have):
        return False
    mods = dict(model.named_modules())
    for k in extra:  # only zero biases of Linear-like modules may be added
        path, _, leaf = k.rpartition(".")
        if leaf != "bias" or path not in mods or not hasattr(mods[path], "weight") or len(want[k]) != 1:
            return False
    for k in sorted(extra):
        path = k.rpartition(".")[0]
        w = mods[path].weight
        mods[path].bias = nn.Parameter(torch.zeros(want[k], dtype=w.dtype, device=w.device))
    from transformers import PretrainedConfig

    for m in model.modules():  # every module holding a config (model, attention, MLP) sees the new sizes
        if isinstance(getattr(m, "config", None), PretrainedConfig):
            m.config = cfg
    return True


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, plans: Iterable[Plan] = (),
                    base_config: Any = None, **kwargs: Any) -> str:
    """Save ``model`` to ``folder``; returns ``"plain"`` (reload with transformers) or ``"prunekit"``
    (per-layer sizes: reload with :func:`from_pretrained`; ``plans`` and ``base_config``, the config
    the plans were made against, are required then)."""
    folder = Path(folder)
    if rewrite_config_(model):
        model.save_pretrained(folder, **kwargs)
        return "plain"
    plans = list(plans)
    if not plans or base_config is None:
        raise ValueError("llm.hf.save_pretrained: this model has per-layer sizes that its config cannot express; "
                         "pass plans=[...] (the structured cuts' plans) and base_config (the config they start from)")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **kwargs)
    if (folder / "pytorch_model.bin").exists():
        raise ValueError("llm.hf.save_pretrained: per-layer sizes are saved as safetensors only (safe_serialization=False given)")
    for name in ("model.safetensors", "model.safetensors.index.json"):  # names the plain loader does not read
        if (folder / name).exists():
            os.replace(folder / name, folder / name.replace("model", "prunekit", 1))
    meta = {"format": FORMAT, "base_config": base_config.to_dict(), "plans": [p.to_dict() for p in plans],
            "note": "per-layer sizes: load with prunekit.llm.from_pretrained(folder)"}
    (folder / PRUNEKIT_FILE).write_text(json.dumps(meta, indent=1))
    refusing = {"model_type": REFUSED_MODEL_TYPE, "architectures": list(getattr(model.config, "architectures", None) or []),
                "prunekit": "this folder holds a model with per-layer sizes; load it with prunekit.llm.from_pretrained"}
    (folder / "config.json").write_text(json.dumps(refusing, indent=1))
    return "prunekit"


def replay_(model: nn.Module, plan: Plan) -> None:
    """Apply a saved structured-cut plan hard, without verification (the weights come next), and the
    per-layer config values some families read in forward (phi3)."""
    units = model_units(model)
    _private_configs(model, units)
    apply_plan(model, plan, "hard", verify=False)
    for g in plan.groups:
        u = units[g["layer"]]
        if u.config_fix is not None:
            groups = set(g["kv_groups"])
            heads = set(g["q_heads"])
            u.config_fix(model, u.n_q - len(heads), u.n_kv - len(groups))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / WEIGHTS_NAME
    if single.exists():
        return load_file(str(single))
    index = folder / (WEIGHTS_NAME + ".index.json")
    if not index.exists():
        raise FileNotFoundError(f"llm.hf.from_pretrained: {folder} has neither {WEIGHTS_NAME} nor its index")
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(folder / f)))
    return out


def from_pretrained(folder: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (either kind), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    folder = Path(folder)
    meta_file = folder / PRUNEKIT_FILE
    if not meta_file.exists():
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"llm.hf.from_pretrained: {meta_file} has format {meta.get('format')!r}, expected {FORMAT}")
    base = dict(meta["base_config"])
    cfg = AutoConfig.for_model(base.pop("model_type"), **base)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    for p in meta["plans"]:
        replay_(model, Plan.from_dict(p))
    state = _weights(folder)
    mods = dict(model.named_modules())
    have = model.state_dict()
    for k, v in state.items():  # biases added after the cut (FLAP compensation)
        path, _, leaf = k.rpartition(".")
        if k not in have and leaf == "bias" and path in mods and getattr(mods[path], "bias", 1) is None:
            mods[path].bias = nn.Parameter(torch.zeros_like(v))
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(f"llm.hf.from_pretrained: weights do not match the replayed model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.tie_weights()
    return model.eval()
