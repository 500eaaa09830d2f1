"""Compressed storage for sparse weights in a safetensors file, so the saving shows on disk.

Each tensor is stored in the smallest of three encodings (chosen per tensor):

- ``dense``:   the tensor as is;
- ``bitmask``: one bit per element (``numpy.packbits``, uint8) plus the non-zero values;
- ``index``:   the flat positions of the non-zeros (uint32, or uint16 when they fit) plus
  the values -- smaller than a bitmask above ~97% sparsity.

Keys are ``<name>`` (dense) or ``<name>::mask`` / ``<name>::index`` with ``<name>::values``;
the file's metadata records every tensor's encoding, shape and dtype, and a CRC-32 of every
stored part. Loading restores the exact tensors (bit for bit).

Writes are atomic (:mod:`prunekit.io.atomic`): the target holds the old file or the new one, an
existing file keeps its permission bits, and a temp file left by a killed save is removed by the
next save to the same place. Reading trusts nothing in the file: the header, dtypes, shapes,
offsets, encodings and checksums are checked before any tensor is decoded, and every problem is a
:class:`~prunekit.errors.FileFormatError`. Decoding allocates at most ``max_bytes`` (by default
1024x the file's size plus 64 MiB, which covers an index-encoded tensor up to 99.9% sparse; pass a
larger value for sparser files). Nothing is unpickled.
"""
from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zlib
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import FileFormatError
from ..io.atomic import atomic_path

FORMAT = "prunekit.sparse/2"
OLD_FORMATS = ("prunekit.sparse/1",)  # no checksums
MAX_HEADER = 100 * 2 ** 20
ENCODINGS = ("dense", "bitmask", "index")

# safetensors dtype code -> torch dtype; the only dtypes a file may name
_ST_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
              "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
              "F64": torch.float64}
_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in _ST_DTYPES.values()}


def _crc(t: torch.Tensor) -> int:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _index_dtype(numel: int):
    return np.uint16 if numel <= np.iinfo(np.uint16).max + 1 else np.uint32


def _encode(name: str, t: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    t = t.detach().cpu().contiguous()
    dense_bytes = t.numel() * t.element_size()
    flat = t.reshape(-1)
    nz = flat != 0
    n_nz = int(nz.sum())
    values = flat[nz]
    value_bytes = n_nz * t.element_size()
    mask_bytes = (t.numel() + 7) // 8
    idx_dtype = _index_dtype(t.numel())
    index_bytes = n_nz * np.dtype(idx_dtype).itemsize
    best = min((dense_bytes, "dense"), (mask_bytes + value_bytes, "bitmask"), (index_bytes + value_bytes, "index"))[1]
    if best == "dense" or t.dim() == 0:
        return "dense", {name: t}
    if best == "bitmask":
        bits = np.packbits(nz.numpy().astype(np.uint8))
        return "bitmask", {f"{name}::mask": torch.from_numpy(bits), f"{name}::values": values}
    positions = torch.nonzero(nz).reshape(-1).numpy().astype(idx_dtype)
    # safetensors has no uint16/uint32 for every torch version: store the raw bytes as uint8
    return "index", {f"{name}::index": torch.from_numpy(positions.view(np.uint8)), f"{name}::values": values}


def save_sparse(state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict[str, str]:
    """Save a model's ``state_dict()`` (or a dict of tensors) compressed; returns each tensor's encoding.

    Tied tensors (one storage under two names) are stored once per name.
    """
    tensors = state.state_dict() if isinstance(state, nn.Module) else dict(state)
    payload: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or "::" in name:
            raise ValueError(f"tensor name {name!r} contains '::', which this format reserves")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        if t.dtype not in _ST_DTYPES.values():
            raise TypeError(f"{name!r} has dtype {t.dtype}, which this format does not store")
        enc, parts = _encode(name, t)
        payload.update({k: v.clone() if v.data_ptr() == t.data_ptr() else v for k, v in parts.items()})
        meta[name] = {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                      "crc32": {k: _crc(v) for k, v in parts.items()}}
    with atomic_path(path) as tmp:
        save_file(payload, tmp, metadata={"format": FORMAT, "tensors": json.dumps(meta)})
    return {n: m["encoding"] for n, m in meta.items()}


# ---------------------------------------------------------------------------------------------- reading


def _read_header(path: str, size: int) -> tuple[dict[str, Any], int]:
    """The safetensors header (checked against the file's size) and where the data starts."""
    if size < 8:
        raise FileFormatError(f"{size} bytes is too short for a safetensors file", path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, MAX_HEADER):
            raise FileFormatError(f"header claims {n} bytes, the file has {size - 8} after its length field", path)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"header is not valid JSON ({e})", path) from None
    if not isinstance(header, dict):
        raise FileFormatError("header is not a JSON object", path)
    return header, 8 + n


def _ints(v: Any, what: str, path: str) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
        raise FileFormatError(f"{what} must be a list of non-negative integers, got {v!r}", path)
    return v


def _check_entries(header: dict, data_start: int, size: int, path: str) -> dict[str, tuple[torch.dtype, tuple]]:
    """dtype and shape of every stored tensor; offsets cover the data region exactly, without overlap."""
    entries: dict[str, tuple[torch.dtype, tuple]] = {}
    spans = []
    for key, e in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(e, dict) or e.get("dtype") not in _ST_DTYPES:
            raise FileFormatError(f"tensor {key!r}: unknown or missing dtype {e.get('dtype') if isinstance(e, dict) else e!r}", path)
        shape = tuple(_ints(e.get("shape"), f"tensor {key!r} shape", path))
        offsets = e.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise FileFormatError(f"tensor {key!r}: data_offsets must be [begin, end], got {offsets!r}", path)
        begin, end = _ints(offsets, f"tensor {key!r} data_offsets", path)
        dtype = _ST_DTYPES[e["dtype"]]
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin > end:
            raise FileFormatError(f"tensor {key!r}: offsets [{begin}, {end}] hold {end - begin} bytes, "
                                  f"shape {list(shape)} of {e['dtype']} needs {nbytes}", path)
        entries[key] = (dtype, shape)
        spans.append((begin, end, key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            raise FileFormatError(f"tensor {key!r} starts at {begin}, expected {pos} (gap or overlap)", path)
        pos = end
    if data_start + pos != size:
        raise FileFormatError(f"data region is {size - data_start} bytes, the header accounts for {pos}", path)
    return entries


def _check_meta(header: dict, entries: dict, path: str, size: int, max_bytes: int | None) -> tuple[dict, bool]:
    """prunekit's metadata: each tensor's encoding, shape, dtype and checksums, consistent with the parts."""
    info = header.get("__metadata__")
    if not isinstance(info, dict) or info.get("format") not in (FORMAT, *OLD_FORMATS):
        fmt = info.get("format") if isinstance(info, dict) else None
        raise FileFormatError(f"not a prunekit sparse file (format {fmt!r})", path)
    checksums = info["format"] == FORMAT
    try:
        meta = json.loads(info.get("tensors", ""))
    except (json.JSONDecodeError, TypeError) as e:
        raise FileFormatError(f"metadata 'tensors' is not valid JSON ({e})", path) from None
    if not isinstance(meta, dict):
        raise FileFormatError("metadata 'tensors' is not a JSON object", path)
    limit = max_bytes if max_bytes is not None else 1024 * size + 64 * 2 ** 20
    total, used = 0, set()
    for name, m in meta.items():
        if not isinstance(m, dict) or m.get("encoding") not in ENCODINGS:
            raise FileFormatError(f"tensor {name!r}: unknown encoding {m.get('encoding') if isinstance(m, dict) else m!r}", path)
        if m.get("dtype") not in _TORCH_DTYPES:
            raise FileFormatError(f"tensor {name!r}: unknown dtype {m.get('dtype')!r}", path)
        shape, dtype = tuple(_ints(m.get("shape"), f"tensor {name!r} shape", path)), _TORCH_DTYPES[m["dtype"]]
        numel = math.prod(shape)
        parts = {"dense": [name], "bitmask": [f"{name}::mask", f"{name}::values"],
                 "index": [f"{name}::index", f"{name}::values"]}[m["encoding"]]
        for p in parts:
            if p not in entries:
                raise FileFormatError(f"tensor {name!r}: part {p!r} is missing", path)
        if checksums:
            crc = m.get("crc32")
            if not isinstance(crc, dict) or set(crc) != set(parts) or not all(isinstance(v, int) for v in crc.values()):
                raise FileFormatError(f"tensor {name!r}: checksums missing or malformed", path)
        used.update(parts)
        if m["encoding"] == "dense":
            if entries[name] != (dtype, shape):
                raise FileFormatError(f"tensor {name!r}: stored as {entries[name][0]} {list(entries[name][1])}, "
                                      f"metadata says {dtype} {list(shape)}", path)
            continue
        vdtype, vshape = entries[f"{name}::values"]
        if vdtype != dtype or len(vshape) != 1 or vshape[0] > numel:
            raise FileFormatError(f"tensor {name!r}: values are {vdtype} {list(vshape)} for {dtype} {list(shape)}", path)
        key = f"{name}::mask" if m["encoding"] == "bitmask" else f"{name}::index"
        pdtype, pshape = entries[key]
        want = (numel + 7) // 8 if m["encoding"] == "bitmask" else vshape[0] * np.dtype(_index_dtype(numel)).itemsize
        if pdtype != torch.uint8 or pshape != (want,):
            raise FileFormatError(f"tensor {name!r}: {key.split('::')[1]} is {pdtype} {list(pshape)}, expected uint8 [{want}]", path)
        total += numel * torch.empty((), dtype=dtype).element_size()
        if total > limit:
            raise FileFormatError(f"tensor {name!r}: decoding would allocate {total} bytes, more than the limit "
                                  f"{limit} for a {size}-byte file (pass max_bytes= to allow it)", path)
    extra = set(entries) - used
    if extra:
        raise FileFormatError(f"stored tensors not described by the metadata: {sorted(extra)[:5]}", path)
    return meta, checksums


def _decode(name: str, m: dict, raw: Mapping[str, torch.Tensor], path: str) -> torch.Tensor:
    dtype, shape = _TORCH_DTYPES[m["dtype"]], tuple(m["shape"])
    if m["encoding"] == "dense":
        return raw[name]
    numel = math.prod(shape)
    values = raw[f"{name}::values"]
    flat = torch.zeros(numel, dtype=dtype)
    if m["encoding"] == "bitmask":
        packed = raw[f"{name}::mask"].numpy()
        bits = np.unpackbits(packed).astype(bool)
        if bits[numel:].any() or int(bits[:numel].sum()) != values.numel():
            raise FileFormatError(f"tensor {name!r}: the mask marks {int(bits.sum())} elements "
                                  f"for {values.numel()} values", path)
        flat[torch.from_numpy(bits[:numel].copy())] = values
    else:
        pos = raw[f"{name}::index"].numpy().view(_index_dtype(numel)).astype(np.int64)
        if len(pos) and (pos[-1] >= numel or (len(pos) > 1 and not (np.diff(pos) > 0).all())):
            raise FileFormatError(f"tensor {name!r}: positions are not increasing within [0, {numel})", path)
        flat[torch.from_numpy(pos)] = values
    return flat.reshape(shape)


def load_sparse(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` back into a plain ``state_dict``.

    Raises :class:`~prunekit.errors.FileFormatError` for any malformed or corrupted file (checked
    before decoding; see the module docstring for the allocation limit ``max_bytes``).
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileFormatError("is a directory, not a prunekit sparse file", path)
    size = os.path.getsize(path)
    header, data_start = _read_header(path, size)
    entries = _check_entries(header, data_start, size, path)
    meta, checksums = _check_meta(header, entries, path, size, max_bytes)
    if not checksums:
        warnings.warn(f"{path}: written by an older prunekit without checksums; corruption cannot be detected",
                      stacklevel=2)
    raw: dict[str, torch.Tensor] = {}
    try:
        with safe_open(path, framework="pt") as f:
            for key in entries:
                raw[key] = f.get_tensor(key)
    except Exception as e:  # noqa: BLE001 -- safetensors' own parse errors, after our checks
        raise FileFormatError(f"safetensors could not read it: {e}", path) from e
    if checksums:
        for name, m in meta.items():
            for key, crc in m["crc32"].items():
                if _crc(raw[key]) != crc:
                    raise FileFormatError(f"tensor {name!r}: checksum mismatch in {key!r}; the file is corrupted", path)
    return {name: _decode(name, m, raw, path).to(device) for name, m in meta.items()}
