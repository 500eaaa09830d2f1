"""Blocks that are not resident: loaded one at a time from safetensors shards, or living where an
accelerate device map put them (CPU or disk offload). Both are :class:`~prunekit.llm.pipeline.BlockSource`
objects for :func:`~prunekit.llm.pipeline.run_blocks` / :func:`~prunekit.llm.sparse.sparsify_llm_`.

- :class:`ShardedSource` builds the model's skeleton on the meta device (accelerate's
  ``init_empty_weights``: parameters on meta, buffers such as the rotary frequencies real), loads
  only the weights the pipeline runs before block 0 (the embeddings; the final norm and the head
  stay on meta), and gives the pipeline block ``i`` read from the shards when asked. A visited
  block is written at once to its own new shard in ``out`` and sent back to meta, so the whole
  model is never resident; :meth:`ShardedSource.finish` copies the other weights from the source
  shards (one tensor at a time) and writes the index, giving a folder that ``from_pretrained`` reads. ``compute_dtype`` (e.g. float32 for a bf16 checkpoint on a CPU
  without bf16 matrix units) loads each block in that dtype, casts the embeddings' output to it, and
  stores blocks back in the checkpoint's dtype (zeros stay zeros; other weights are rounded to it).
- :class:`OffloadedSource` takes a model dispatched with an accelerate device map: blocks on a
  device are visited as they are; blocks offloaded to CPU RAM or disk are materialised from their
  offload map, visited, and their new weights written back into that map (the RAM copy in place,
  disk as new ``.dat`` files next to the others), then offloaded again -- so the dispatched model
  runs the pruned weights afterwards.

>>> src = ShardedSource("llama-1b", out="llama-1b-wanda")            # doctest: +SKIP
>>> sparsify_llm_(src.model, calib[:8], "wanda", source=src)         # doctest: +SKIP
>>> src.finish()                                                     # doctest: +SKIP
"""
from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .arch import DecoderLayout, layout

WEIGHTS_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"
_COPY_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "tokenizer.model", "vocab.json", "merges.txt")


def _dtype_kw(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for transformers >= 4.56 (``torch_dtype`` is deprecated there), ``torch_dtype=`` before."""
    import transformers

    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index (or the single ``model.safetensors``)."""
    index = folder / WEIGHTS_INDEX
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    single = folder / SINGLE_WEIGHTS
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: SINGLE_WEIGHTS for k in f.keys()}
    raise FileNotFoundError(f"llm.loading: {folder} has neither {WEIGHTS_INDEX} nor {SINGLE_WEIGHTS} "
                            "(only safetensors checkpoints load block by block)")


def _read(folder: Path, names: list[str], weight_map: dict[str, str], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Read ``names`` from their shards, one shard open at a time (closed at once, so its pages leave the process)."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(weight_map[n], []).append(n)
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        with safe_open(str(folder / file), framework="pt") as f:
            for k in keys:
                t = f.get_tensor(k)
                out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t.clone()
    return out


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def save_streamed(path: str | os.PathLike, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Write a safetensors file tensor by tensor, each cast to ``dtype`` only while it is written.

    Unlike ``safetensors.torch.save_file`` (which serialises every tensor into one buffer first),
    this holds at most one converted tensor besides the inputs. Returns the file size in bytes.
    """
    names = sorted(tensors)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        t = tensors[n]
        dt = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if dt not in _ST_DTYPES:
            raise TypeError(f"llm.loading: cannot write {n} of dtype {dt} to safetensors")
        size = t.numel() * torch.empty((), dtype=dt).element_size()
        header[n] = {"dtype": _ST_DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for n in names:
            t = tensors[n].detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            f.write(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data)
            del t
    return 8 + len(blob) + offset


def _release_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def lean_malloc(threshold: int = 1 << 20) -> bool:
    """Ask glibc to serve every allocation above ``threshold`` bytes with its own mapping (``mallopt``
    ``M_MMAP_THRESHOLD``, as the ``MALLOC_MMAP_THRESHOLD_`` environment variable does), so a freed
    tensor goes back to the OS at once instead of fragmenting the heap. Process-wide: for entry points
    (the ``--low-memory`` CLI, benchmarks), not for libraries. Returns False where glibc is absent.
    Measured on the 1.1 B benchmark: Wanda's peak above the baseline 769 MiB -> 419 MiB (0.366x -> 0.200x of the shards)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class ShardedSource:
    """A model read block by block from a safetensors checkpoint folder; pruned blocks written to new shards.

    ``model``: the skeleton (blocks on meta) to hand to the pipeline. ``out``: where visited blocks
    go (``None``: they are dropped after the visit -- for measuring only). ``compute_dtype``: see the
    module docstring.
    """

    def __init__(self, folder: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 compute_dtype: torch.dtype | None = None) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder = Path(folder)
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            if self.out.resolve() == self.folder.resolve():
                raise ValueError(f"llm.loading: out ({self.out}) must differ from the source folder")
            self.out.mkdir(parents=True, exist_ok=True)
        self.weight_map = _weight_map(self.folder)
        config = AutoConfig.from_pretrained(self.folder)
        self.store_dtype = getattr(config, "torch_dtype", None) or torch.float32
        if isinstance(self.store_dtype, str):
            self.store_dtype = getattr(torch, self.store_dtype)
        self.compute_dtype = compute_dtype or self.store_dtype
        with init_empty_weights():
            self.model = AutoModelForCausalLM.from_config(config, **_dtype_kw(self.store_dtype))
        self.model.eval()
        self.layout: DecoderLayout = layout(self.model)
        prefix = self.layout.blocks_path + "."
        block_keys = [k for k in self.weight_map if k.startswith(prefix)]
        self._rest = [k for k in self.weight_map if not k.startswith(prefix)]
        self._block_keys: dict[int, list[str]] = {}
        for k in block_keys:
            self._block_keys.setdefault(int(k[len(prefix):].split(".", 1)[0]), []).append(k)
        if sorted(self._block_keys) != list(range(len(self.layout.blocks))):
            raise ValueError(f"llm.loading: {self.folder} holds weights for blocks {sorted(self._block_keys)[:8]}..., "
                             f"the config has {len(self.layout.blocks)}")
        model_keys = set(self.model.state_dict())
        unexpected = [k for k in self._rest if k not in model_keys]
        if unexpected:
            raise ValueError(f"llm.loading: weights in {self.folder} the model does not have: {unexpected[:5]}")
        embed = tuple(p + "." for p in self.layout.embed)
        first = _read(self.folder, [k for k in self._rest if k.startswith(embed)], self.weight_map, None)
        self.model.load_state_dict(first, strict=False, assign=True)
        if getattr(config, "tie_word_embeddings", False):
            self.model.tie_weights()
        unloaded = [n for p in self.layout.embed for n, t in self.model.get_submodule(p).named_parameters() if t.is_meta]
        if unloaded:
            raise ValueError(f"llm.loading: {self.folder} has no weights for the embeddings {unloaded[:5]}")
        self._embed_keys = sorted(first)
        del first
        self._hooks = []
        if self.compute_dtype != self.store_dtype:
            for path in self.layout.embed:
                self._hooks.append(self.model.get_submodule(path).register_forward_hook(self._cast_output))
        self._written: dict[str, str] = {}
        self.loads = 0

    def _cast_output(self, module: nn.Module, args: Any, out: Any) -> Any:
        return out.to(self.compute_dtype) if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def _embed_back(self) -> None:
        """Read the embeddings again (released while the blocks run), ready for another pass (e.g. OWL)."""
        state = _read(self.folder, self._embed_keys, self.weight_map, None)
        self.model.load_state_dict(state, strict=False, assign=True)
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def load(self, i: int) -> nn.Module:
        """Block ``i`` with its weights read from the shards (in ``compute_dtype``).

        Block 0 is asked for once its inputs are captured: the embeddings are released then, and read
        again when the last block is stored (so the skeleton can run another pass)."""
        if i == 0:
            for p in self.layout.embed:
                self.model.get_submodule(p).to("meta")
            _release_heap()
        block = self.layout.blocks[i]
        prefix = f"{self.layout.blocks_path}.{i}."
        tensors = _read(self.folder, self._block_keys[i], self.weight_map, self.compute_dtype)
        state = {k[len(prefix):]: v for k, v in tensors.items()}
        missing, unexpected = block.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(f"llm.loading: block {i} in {self.folder}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if self.compute_dtype != self.store_dtype:
            block.to(self.compute_dtype)  # buffers too (e.g. a per-block rotary cache)
        self.loads += 1
        return block

    def store(self, i: int, block: nn.Module) -> None:
        """Write block ``i`` to its own shard in ``out`` (checkpoint dtype), then send it back to meta."""
        if self.out is not None:
            prefix = f"{self.layout.blocks_path}.{i}."
            name = f"model-block-{i:05d}.safetensors"
            state = {prefix + k: v for k, v in block.state_dict().items() if prefix + k in self.weight_map}
            save_streamed(self.out / name, state, self.store_dtype)
            self._written.update({k: name for k in state})
            del state
        block.to("meta")
        _release_heap()
        if i == len(self.layout.blocks) - 1:
            self._embed_back()

    def finish(self) -> Path:
        """Write the weights outside the blocks, the index, the config (and tokenizer files) to ``out``."""
        if self.out is None:
            raise ValueError("llm.loading: finish() needs out= (nothing was written)")
        missing = [k for keys in self._block_keys.values() for k in keys if k not in self._written]
        if missing:
            raise RuntimeError(f"llm.loading: blocks not stored yet (e.g. {missing[:3]}); run every block first")

        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        name = "model-rest.safetensors"
        rest = _read(self.folder, self._rest, self.weight_map, None)  # unchanged by per-weight pruning
        save_streamed(self.out / name, rest)
        weight_map = dict(self._written, **{k: name for k in rest})
        del rest
        total = sum(os.path.getsize(self.out / f) for f in set(weight_map.values()))
        (self.out / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                          "weight_map": dict(sorted(weight_map.items()))}, indent=1))
        self.model.config.save_pretrained(self.out)
        for f in _COPY_FILES:
            if (self.folder / f).exists():
                shutil.copy(self.folder / f, self.out / f)
        return self.out


# ---------------------------------------------------------------------------------------------
# models dispatched with an accelerate device map


def _align_hooks(module: nn.Module) -> Iterator[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return
    for h in getattr(hook, "hooks", (hook,)):
        if type(h).__name__ == "AlignDevicesHook":
            yield h


def _offloaded(root: nn.Module) -> list[tuple[nn.Module, Any]]:
    """(module, hook) for every submodule of ``root`` whose weights an accelerate hook keeps offloaded."""
    return [(m, h) for m in root.modules() for h in _align_hooks(m) if h.offload]


def _tensor_names(module: nn.Module, hook: Any) -> list[str]:
    from accelerate.utils import named_module_tensors

    return [n for n, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                               recurse=hook.place_submodules, remove_non_persistent=True)]


def _onload(module: nn.Module, hook: Any) -> None:
    from accelerate.utils import set_module_tensor_to_device

    device = hook.execution_device if hook.execution_device is not None else "cpu"
    for name in _tensor_names(module, hook):
        set_module_tensor_to_device(module, name, device, value=hook.weights_map[name])
    hook.offload = False  # the forward must use these (to-be-pruned) weights, not re-read the map


def _write_back(module: nn.Module, hook: Any, offload_dir: Path | None) -> None:
    """Put the module's current tensors back into its offload map, then offload it again (meta)."""
    from accelerate.utils import offload_weight, set_module_tensor_to_device

    wmap = hook.weights_map
    dataset, prefix = (wmap.dataset, wmap.prefix) if hasattr(wmap, "dataset") else (wmap, "")
    for name in _tensor_names(module, hook):
        value = module.get_parameter(name) if name in dict(module.named_parameters()) else module.get_buffer(name)
        value = value.detach().cpu()
        key = prefix + name
        state = getattr(dataset, "state_dict", dataset)
        if isinstance(state, dict) and key in state:
            target = state[key]
            if target.shape != value.shape:
                raise ValueError(f"llm.loading: {key} changed shape {tuple(target.shape)} -> {tuple(value.shape)}; "
                                 "an offloaded block can only be pruned in place (per-weight sparsity)")
            target.copy_(value)
        elif hasattr(dataset, "index"):
            folder = dataset.save_folder if dataset.save_folder is not None else offload_dir
            if folder is None:
                raise ValueError(f"llm.loading: {key} is offloaded to a read-only safetensors file and the offload "
                                 "map has no folder; pass OffloadedSource(model, offload_dir=...)")
            offload_weight(value, key, str(folder), index=dataset.index)
            if dataset.save_folder is None:
                dataset.save_folder = str(folder)
        else:
            raise TypeError(f"llm.loading: cannot write {key} back into a {type(dataset).__name__} offload map")
        set_module_tensor_to_device(module, name, "meta")
    hook.offload = True


class OffloadedSource:
    """Blocks of a model dispatched with an accelerate device map, visited where they live.

    Blocks on a device are returned as they are. Blocks offloaded (CPU RAM or disk) are materialised
    on their execution device for the visit and written back into their offload map after it
    (see the module docstring). Embeddings / rotary modules that are offloaded are materialised
    for the run; call :meth:`close` (or use ``with``) to offload them again.
    """

    def __init__(self, model: nn.Module, *, offload_dir: str | os.PathLike | None = None) -> None:
        self.model = model
        self.layout = layout(model)
        self.offload_dir = Path(offload_dir) if offload_dir is not None else None
        if self.offload_dir is not None:
            self.offload_dir.mkdir(parents=True, exist_ok=True)
        self._pre = [(m, h) for p in self.layout.embed + ((self.layout.rotary,) if self.layout.rotary else ())
                     for m, h in _offloaded(model.get_submodule(p))]
        for m, h in self._pre:
            _onload(m, h)
        self.offloaded_blocks = [i for i, b in enumerate(self.layout.blocks) if _offloaded(b)]
        self._open: dict[int, list[tuple[nn.Module, Any]]] = {}

    def __enter__(self) -> "OffloadedSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def load(self, i: int) -> nn.Module:
        block = self.layout.blocks[i]
        pairs = _offloaded(block)
        for m, h in pairs:
            _onload(m, h)
        self._open[i] = pairs
        return block

    def store(self, i: int, block: nn.Module) -> None:
        for m, h in self._open.pop(i, []):
            _write_back(m, h, self.offload_dir)
        gc.collect()

    def close(self) -> None:
        """Offload again the embedding modules materialised for the run (written back unchanged)."""
        for m, h in self._pre:
            from accelerate.utils import set_module_tensor_to_device

            for name in _tensor_names(m, h):
                set_module_tensor_to_device(m, name, "meta")
            h.offload = True
        self._pre = []
