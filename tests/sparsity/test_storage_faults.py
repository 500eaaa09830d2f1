"""The sparse file format trusts nothing it reads: malformed, corrupted and crafted files raise the one
documented error (FileFormatError) before anything large is allocated; writes are atomic, keep modes
and clean up after a killed writer."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from prunekit.errors import FileFormatError
from prunekit.io.atomic import SUFFIX, temp_name
from prunekit.sparsity import load_sparse, save_sparse


def _state():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 16, generator=g)
    w[w.abs() < 0.8] = 0  # ~58% zeros: bitmask
    very = torch.zeros(40, 40)
    very[3, 5], very[30, 1] = 1.5, -2.0  # index
    return {"w": w, "very": very, "b": torch.randn(16, generator=g), "half": torch.randn(4, dtype=torch.float16)}


def _equal(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _rewrite_header(path, edit):
    """Apply ``edit`` to the parsed header (prunekit's metadata decoded) and write the file back."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    original = header["__metadata__"]["tensors"]
    meta = json.loads(original)
    edit(header, meta)
    if header["__metadata__"].get("tensors") == original:  # unless the edit replaced the field itself
        header["__metadata__"]["tensors"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_round_trip_with_checksums(tmp_path):
    state = _state()
    enc = save_sparse(state, tmp_path / "s.safetensors")
    assert enc == {"w": "bitmask", "very": "index", "b": "dense", "half": "dense"}
    assert _equal(load_sparse(tmp_path / "s.safetensors"), state)


def test_a_flipped_bit_in_the_values_is_caught(tmp_path):
    path = tmp_path / "s.safetensors"
    save_sparse(_state(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="checksum mismatch"):
        load_sparse(path)


def test_a_header_claiming_2_pow_33_elements_is_refused_before_allocating(tmp_path):
    path = tmp_path / "s.safetensors"
    save_sparse(_state(), path)
    _rewrite_header(path, lambda h, m: m["very"].update(shape=[2 ** 33]))
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match="allocate|index"):
        load_sparse(path)
    assert time.perf_counter() - t0 < 5  # nothing of 32 GiB was touched


def test_decoding_limit_is_adjustable_and_named(tmp_path):
    big = torch.zeros(2 ** 20)
    big[7] = 1.0
    path = tmp_path / "s.safetensors"
    save_sparse({"big": big}, path)
    with pytest.raises(FileFormatError, match="max_bytes"):
        load_sparse(path, max_bytes=1000)
    assert torch.equal(load_sparse(path, max_bytes=2 ** 23)["big"], big)


@pytest.mark.parametrize("edit, match", [
    (lambda h, m: m["w"].update(shape="16x16"), "shape"),
    (lambda h, m: m["w"].update(shape=[16, -16]), "shape"),
    (lambda h, m: m["w"].update(dtype="load"), "dtype"),
    (lambda h, m: m["w"].update(encoding="zip"), "encoding"),
    (lambda h, m: m["w"].pop("crc32"), "checksum"),
    (lambda h, m: m.update(ghost={"encoding": "dense", "shape": [1], "dtype": "float32", "crc32": {"ghost": 0}}), "missing"),
    (lambda h, m: m.pop("b"), "not described"),
    (lambda h, m: m["b"].update(shape=[4, 4]), "metadata says"),
    (lambda h, m: m["w"].update(shape=[8, 16]), "values|mask"),
    (lambda h, m: h["b"].update(data_offsets=[0, 10 ** 12]), "offsets|bytes"),
    (lambda h, m: h["b"].update(dtype="F8"), "dtype"),
    (lambda h, m: h["__metadata__"].update(format="other/1"), "not a prunekit sparse file"),
    (lambda h, m: h["__metadata__"].update(tensors=None), "tensors"),
])
def test_crafted_metadata_gives_the_documented_error(tmp_path, edit, match):
    path = tmp_path / "s.safetensors"
    save_sparse(_state(), path)
    _rewrite_header(path, edit)
    with pytest.raises(FileFormatError, match=match):
        load_sparse(path)


def test_truncated_empty_and_directory_paths(tmp_path):
    path = tmp_path / "s.safetensors"
    save_sparse(_state(), path)
    data = path.read_bytes()
    for cut in (0, 5, 8, 20, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(FileFormatError):
            load_sparse(path)
    path.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
    with pytest.raises(FileFormatError, match="header claims"):
        load_sparse(path)
    with pytest.raises(FileFormatError, match="directory"):
        load_sparse(tmp_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_fuzz_mutated_files_load_identically_or_raise_the_documented_error(tmp_path, edits, cut):
    """Random byte flips (header and data) and truncations: the file loads bit for bit as saved, or
    raises FileFormatError -- never another exception, never a different tensor, never more than
    ``max_bytes`` (4x the file) decoded."""
    state = _state()
    path = tmp_path / "f.safetensors"
    save_sparse(state, path)
    data = bytearray(path.read_bytes())
    for pos, xor in edits:
        data[pos % len(data)] ^= xor
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    path.write_bytes(bytes(data))
    try:
        back = load_sparse(path, max_bytes=4 * len(data))
    except FileFormatError:
        return
    assert _equal(back, state)


def test_existing_file_mode_is_kept_and_new_files_follow_the_umask(tmp_path):
    path = tmp_path / "s.safetensors"
    save_sparse(_state(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == 0o666 & ~umask
    os.chmod(path, 0o640)
    save_sparse(_state(), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "s.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_name(path.absolute(), int(dead.stdout))
    stale.write_bytes(b"x" * 1000)
    alive = temp_name(path.absolute(), os.getppid())  # a running process: maybe a concurrent save, kept
    alive.write_bytes(b"y")
    save_sparse(_state(), path)
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, alive.name])


_N = 10_000_000  # 40 MB: the write takes long enough to be cut in the middle

_WRITER = textwrap.dedent(f"""
    import sys, torch
    from prunekit.sparsity import save_sparse
    value = float(sys.argv[2])
    save_sparse({{"w": torch.full(({_N},), value), "k": torch.tensor([value])}}, sys.argv[1])
""")


def test_kill_9_mid_save_leaves_the_old_or_the_new_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "big.safetensors"
    old = {"w": torch.full((_N,), 1.0), "k": torch.tensor([1.0])}
    save_sparse(old, path)
    mid_write = 0
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "2.0"],
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not any(
                p.name.endswith(SUFFIX) for p in tmp_path.iterdir()):
            time.sleep(0.001)
        time.sleep(0.002 * attempt)
        staged = any(p.name.endswith(SUFFIX) for p in tmp_path.iterdir())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += staged and proc.returncode == -signal.SIGKILL
        back = load_sparse(path)  # old or new, complete either way
        assert back["k"].item() in (1.0, 2.0) and torch.equal(back["w"], torch.full((_N,), back["k"].item()))
        save_sparse(old, path)
        assert [p.name for p in tmp_path.iterdir()] == [path.name], "the next save removes the killed writer's temp file"
    assert mid_write, "no kill landed while the temp file was being written; the test proved nothing"
