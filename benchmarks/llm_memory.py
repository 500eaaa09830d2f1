"""Memory of one-shot LLM sparsity when blocks are loaded one at a time from safetensors shards (#14).

1. Write a Llama of about 1.1 B parameters (TinyLlama-1.1B's shape: hidden 2048, MLP 5632, 22 layers,
   32 query / 4 KV heads, vocabulary 32000, untied head) with random bf16 weights as safetensors
   shards, one block per shard, generated tensor by tensor: the whole model is never in memory.
2. For each method (50% Wanda, 50% SparseGPT), in a fresh process: measure the interpreter's
   resident set after the imports (the baseline), then run ``sparsify_llm_`` with a
   :class:`~prunekit.llm.loading.ShardedSource` (skeleton on meta, one block read, pruned in float32,
   written to its own new shard in bf16, freed), and read the peak resident set (VmHWM, which counts
   the pages of memory-mapped shards too). Target: peak - baseline <= 0.35 x the shards' size.

Calibration is deliberately small (random token ids, 4 windows of 512: the hidden states are 16 MB)
since the point is memory; the machine is a 2-core CPU without bf16 matrix units, hence float32
compute. ``--time-box`` stops a method after that many seconds; the report says how many blocks ran.

    python benchmarks/llm_memory.py [--windows 4] [--time-box 2400] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
              tie_word_embeddings=False, torch_dtype="bfloat16")


def _status(field: str) -> int:
    """A memory field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def write_shards(folder: Path, seed: int = 0) -> dict:
    """Random bf16 weights of the CONFIG Llama, one shard per block plus one for the rest, tensor by tensor."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**CONFIG)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    groups: dict[str, list[str]] = {}
    for k in shapes:
        groups.setdefault(f"model-block-{int(k.split('.')[2]):05d}.safetensors" if k.startswith("model.layers.")
                          else "model-rest.safetensors", []).append(k)
    weight_map, total, params = {}, 0, 0
    for file, keys in groups.items():
        tensors = {}
        for k in keys:
            if k.endswith("norm.weight"):
                t = torch.ones(shapes[k], dtype=torch.bfloat16)
            else:
                t = (torch.randn(shapes[k], generator=gen) * 0.02).to(torch.bfloat16)
            tensors[k] = t
            params += t.numel()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
        total += (folder / file).stat().st_size
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config.save_pretrained(folder)
    return {"params": params, "shard_bytes": total, "shards": len(groups)}


class _TimeBox(Exception):
    pass


def run_method(folder: Path, out: Path, method: str, windows: int, time_box: float) -> dict:
    """One method in this (fresh) process: baseline after imports, then the sharded run; peak from VmHWM."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transformers import LlamaForCausalLM  # noqa: F401  (the model's code, imported lazily otherwise)

    from prunekit.llm.loading import ShardedSource
    from prunekit.llm.sparse import sparsify_llm_

    baseline = _status("VmRSS")
    start = time.perf_counter()
    src = ShardedSource(folder, out, compute_dtype=torch.float32)
    after_skeleton = _status("VmRSS")
    calib = torch.randint(0, CONFIG["vocab_size"], (windows, 512), generator=torch.Generator().manual_seed(1))
    blocks_done: list[float] = []
    store = src.store

    def timed_store(i, block):
        store(i, block)
        blocks_done.append(round(time.perf_counter() - start, 1))
        print(f"[{method}] block {i + 1}/{CONFIG['num_hidden_layers']} at {blocks_done[-1]} s, "
              f"peak so far {(_status('VmHWM') - baseline) / 2**20:.0f} MiB above baseline", flush=True)
        if time.perf_counter() - start > time_box and i + 1 < CONFIG["num_hidden_layers"]:
            raise _TimeBox
    src.store = timed_store
    finished = True
    try:
        sparsify_llm_(src.model, calib, method, 0.5, progress=False, source=src)
        src.finish()
    except _TimeBox:
        finished = False
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    check = {}
    if blocks_done:
        from safetensors import safe_open

        with safe_open(str(out / "model-block-00000.safetensors"), framework="pt") as f:
            w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
            check = {"block0_down_proj_sparsity": round(float((w == 0).float().mean()), 4), "dtype": str(w.dtype)}
    return {"method": method, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "peak_above_baseline_bytes": peak - baseline, "skeleton_rss_above_baseline_bytes": after_skeleton - baseline,
            "blocks_done": len(blocks_done), "finished": finished, "seconds": round(seconds, 1),
            "block_times_s": blocks_done, "windows": windows, "seq_len": 512, **check}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--time-box", type=float, default=2400.0, help="seconds per method")
    p.add_argument("--methods", default="wanda,sparsegpt")
    p.add_argument("--dir", default=None, help="work folder (default: a new one in the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the shards")
    p.add_argument("--parallel", action="store_true", help="run the methods at the same time (separate processes)")
    p.add_argument("--mmap-threshold", type=int, default=None,
                   help="set MALLOC_MMAP_THRESHOLD_ (bytes) for the runs: glibc then serves every larger tensor "
                        "with its own mapping, returned at free (no heap fragmentation)")
    p.add_argument("--name", default="llm_memory", help="results file stem in benchmarks/results")
    p.add_argument("--small", action="store_true", help="a tiny config, to check the script (results not written)")
    p.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.small:
        CONFIG.update(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="prunekit-llm-memory-"))
    if args._run:  # child: one method
        res = run_method(work / "shards", work / f"out-{args._run}", args._run, args.windows, args.time_box)
        (work / f"result-{args._run}.json").write_text(json.dumps(res))
        return 0
    free = shutil.disk_usage(work).free
    print(f"work folder {work}; free disk {free / 2**30:.1f} GiB")
    shards = work / "shards"
    if not (shards / "model.safetensors.index.json").exists():
        shards.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        meta = write_shards(shards)
        meta["write_seconds"] = round(time.perf_counter() - t, 1)
        (work / "shards.json").write_text(json.dumps(meta))
    meta = json.loads((work / "shards.json").read_text())
    print(f"shards: {meta['params'] / 1e9:.3f} B parameters, {meta['shard_bytes'] / 2**30:.3f} GiB in {meta['shards']} "
          f"files", flush=True)
    methods = args.methods.split(",")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    cmd = lambda m: [sys.executable, __file__, "--dir", str(work), "--windows", str(args.windows),  # noqa: E731
                     "--time-box", str(args.time_box), "--_run", m] + (["--small"] if args.small else [])
    if args.parallel:
        procs = [subprocess.Popen(cmd(m), env=env) for m in methods]
        codes = [pr.wait() for pr in procs]
    else:
        codes = [subprocess.call(cmd(m), env=env) for m in methods]
    rows = []
    for m, code in zip(methods, codes):
        f = work / f"result-{m}.json"
        if code != 0 or not f.exists():
            rows.append({"method": m, "error": f"exit code {code}"})
            continue
        r = json.loads(f.read_text())
        r["shard_bytes"] = meta["shard_bytes"]
        r["ratio"] = round(r["peak_above_baseline_bytes"] / meta["shard_bytes"], 4)
        r["target_met"] = r["ratio"] <= 0.35
        r["malloc_mmap_threshold"] = args.mmap_threshold
        rows.append(r)
        shutil.rmtree(work / f"out-{m}", ignore_errors=True)
    result = {"benchmark": "llm_memory", "config": CONFIG, "params": meta["params"], "shard_bytes": meta["shard_bytes"],
              "threads": int(env["OMP_NUM_THREADS"]), "parallel": args.parallel, "rows": rows,
              "note": "random bf16 weights, random token ids; float32 compute on CPU; peak = VmHWM (includes pages of "
                      "memory-mapped shards), baseline = VmRSS after importing torch, transformers "
                      "(LlamaForCausalLM), accelerate and prunekit.llm"}
    results = RESULTS if not args.small else work
    results.mkdir(exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    gib = 2 ** 30
    lines = ["# LLM memory: one block at a time from safetensors shards (#14)", "",
             f"Llama, {meta['params'] / 1e9:.3f} B parameters (TinyLlama-1.1B shape), random bf16 weights, "
             f"{meta['shard_bytes'] / gib:.3f} GiB of shards in {meta['shards']} files. Calibration: {args.windows} "
             f"windows of 512 random token ids. CPU, {env['OMP_NUM_THREADS']} thread(s) per process, float32 compute, "
             f"blocks written back in bf16. glibc MALLOC_MMAP_THRESHOLD_: "
             f"{args.mmap_threshold if args.mmap_threshold is not None else 'default (dynamic)'}. Target: peak RSS above the baseline <= 0.35 x shards.", "",
             "| method | baseline RSS | peak RSS | peak - baseline | / shards | target | blocks | time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['method']} 50% | {r['baseline_rss_bytes'] / gib:.3f} GiB | {r['peak_rss_bytes'] / gib:.3f} GiB "
                     f"| {r['peak_above_baseline_bytes'] / gib:.3f} GiB | {r['ratio']:.3f} | "
                     f"{'met' if r['target_met'] else 'NOT met'} | {r['blocks_done']}/{CONFIG['num_hidden_layers']}"
                     f"{'' if r['finished'] else ' (time-boxed)'} | {r['seconds']:.0f} s |")
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep and not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
