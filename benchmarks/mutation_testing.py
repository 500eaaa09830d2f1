"""Mutation testing: does each source file's own test selection fail when the file is wrong?

A small AST mutation runner (classic operators), run over a *snapshot copy* of ``src/`` so the
working tree is never touched. For every target file, every mutant (or a deterministic sample
of them) is written into the snapshot and the file's focused test selection runs against it; a
mutant is *killed* when a test fails (or the run exceeds the per-mutant timeout), and
*survives* when every selected test passes.

Operators (one change per mutant):

- ``cmp``: comparison flips, ``==``/``!=``, ``<``/``<=``, ``>``/``>=``, ``is``/``is not``,
  ``in``/``not in``;
- ``arith``: ``+``/``-``, ``*``/``/``, ``//`` -> ``/``, augmented assignments likewise,
  unary minus dropped;
- ``const``: an int ``n`` -> ``n + 1``, a float ``x`` -> ``x + 1.0``, ``True``/``False`` swapped;
- ``return``: ``return x`` -> ``return None``;
- ``bool``: ``and``/``or`` swapped, ``not x`` -> ``x``, an ``if``/``while`` test negated;
- ``stmt``: a call statement, augmented assignment, attribute/subscript store, ``raise``,
  ``break`` or ``continue`` replaced by ``pass``.

Docstrings, strings and annotations are not mutated. Each mutant runs in a child forked from a
parent that has already imported torch, torchvision and pytest (prunekit itself is imported
fresh by each child from the snapshot), so one mutant costs about its tests' own time.

Why not mutmut: mutmut 3 first runs the configured test directory whole to map tests to code,
and writes its trampolined copy under ``mutants/`` in the project; on 2 shared cores with the
working tree edited by others, a per-file focused selection over a snapshot is cheaper and safe.

    nice -n 15 python benchmarks/mutation_testing.py [--files selection.py criteria/base.py] \\
        [--max-per-file 60] [--timeout-factor 4] [--report-only]

Writes benchmarks/results/mutation_testing.{json,md}; reasons for surviving mutants are read
from benchmarks/results/mutation_testing.reasons.json (key -> one line) and shown in the report.
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results"
OUT_JSON, OUT_MD = RESULTS / "mutation_testing.json", RESULTS / "mutation_testing.md"
REASONS = RESULTS / "mutation_testing.reasons.json"

_GRAPH = ["tests/graph/test_tracer.py", "tests/graph/test_execute.py", "tests/graph/test_op_rules.py",
          "tests/graph/test_exactness.py"]
# source file (relative to src/prunekit) -> the tests that cover it (a focused selection)
TARGETS: dict[str, list[str]] = {
    "selection.py": ["tests/test_selection.py"],
    "verify.py": ["tests/test_verify.py"],
    "plan.py": ["tests/test_plan.py"],
    "criteria/base.py": ["tests/criteria/test_criteria.py", "tests/test_selection.py"],
    "criteria/magnitude.py": ["tests/criteria/test_criteria.py"],
    "criteria/data.py": ["tests/criteria/test_criteria.py"],
    "sparsity/api.py": ["tests/sparsity/test_api.py"],
    "sparsity/masks.py": ["tests/sparsity/test_masks.py", "tests/sparsity/test_api.py"],
    "sparsity/parametrize.py": ["tests/sparsity/test_parametrize.py", "tests/sparsity/test_api.py"],
    "sparsity/storage.py": ["tests/sparsity/test_storage.py"],
    "graph/labels.py": _GRAPH,
    "graph/groups.py": _GRAPH,
    "graph/tracer.py": _GRAPH,
    "graph/execute.py": ["tests/graph/test_execute.py"],
    "graph/walk.py": _GRAPH,
    "graph/registry.py": _GRAPH,
    "graph/info.py": _GRAPH,
    "graph/rules/common.py": _GRAPH,
    "graph/rules/elementwise.py": _GRAPH,
    "graph/rules/reduce.py": _GRAPH + ["tests/graph/test_reductions.py"],
    "graph/rules/linalg.py": _GRAPH + ["tests/graph/test_attention_reach.py"],
    "graph/rules/shape.py": _GRAPH,
    "graph/rules/indexing.py": _GRAPH + ["tests/graph/test_indexing_reach.py"],
    "graph/rules/nn_functional.py": _GRAPH + ["tests/graph/test_attention_reach.py"],  # MultiheadAttention
    "graph/rules/recurrent.py": _GRAPH + ["tests/graph/test_rnn.py"],
}
SEED = "prunekit-mutation-1"


# ---------------------------------------------------------------------------------- operators
CMP_SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
            ast.GtE: ast.Gt, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div}
_SKIP_FIELDS = {"annotation", "returns", "type_comment", "decorator_list"}


@dataclass
class Mutant:
    file: str
    index: int  # position in the file's enumeration
    op: str
    line: int
    before: str  # the mutated node's source
    after: str
    status: str = "pending"  # killed / survived / timeout / error
    seconds: float = 0.0
    key: str = ""


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _deletable(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Expr):
        return not _is_docstring(stmt) and isinstance(stmt.value, (ast.Call, ast.Await))
    if isinstance(stmt, ast.Assign):
        return all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in stmt.targets)
    return isinstance(stmt, (ast.AugAssign, ast.Raise, ast.Break, ast.Continue))


class _Mutator:
    """Walks a module in a fixed order; the k-th mutation point is applied when ``target == k``.
    With ``target = -1`` it only lists the points (op, line, before, after)."""

    def __init__(self, target: int = -1):
        self.target, self.k, self.points = target, 0, []

    def _point(self, op: str, node: ast.AST, make) -> ast.AST | None:
        k = self.k
        self.k += 1
        if self.target == -1:
            new = make()
            self.points.append((op, getattr(node, "lineno", 0), _src(node), _src(new)))
            return None
        return make() if k == self.target else None

    def visit(self, node: ast.AST) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if name in _SKIP_FIELDS:
                continue
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    for i, stmt in enumerate(value):
                        if _deletable(stmt):
                            rep = self._point("stmt", stmt, lambda s=stmt: ast.copy_location(ast.Pass(), s))
                            if rep is not None:
                                value[i] = rep
                                continue
                        value[i] = self.visit(stmt)
                else:
                    value[:] = [self.visit(v) if isinstance(v, ast.AST) else v for v in value]
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
        return self._mutate(node)

    def _mutate(self, node: ast.AST) -> ast.AST:
        rep = None
        if isinstance(node, ast.Compare):
            for j, o in enumerate(node.ops):
                if type(o) in CMP_SWAP:
                    def make(j=j, o=o):
                        n = copy.deepcopy(node)
                        n.ops[j] = CMP_SWAP[type(o)]()
                        return n
                    rep = self._point("cmp", node, make) or rep
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
            if not (isinstance(node.op, ast.Add) and _is_str(node)):
                rep = self._point("arith", node, lambda: ast.copy_location(
                    ast.BinOp(node.left, BIN_SWAP[type(node.op)](), node.right), node))
        elif isinstance(node, ast.AugAssign) and type(node.op) in BIN_SWAP:
            rep = self._point("arith", node, lambda: ast.copy_location(
                ast.AugAssign(node.target, BIN_SWAP[type(node.op)](), node.value), node))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            rep = self._point("arith", node, lambda: node.operand)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            rep = self._point("bool", node, lambda: node.operand)
        elif isinstance(node, ast.BoolOp):
            rep = self._point("bool", node, lambda: ast.copy_location(
                ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values), node))
        elif isinstance(node, (ast.If, ast.While)):
            def make():
                n = copy.copy(node)
                n.test = ast.UnaryOp(ast.Not(), node.test)
                return n
            rep = self._point("bool", node, make)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            v = node.value
            new = (not v) if isinstance(v, bool) else v + 1
            rep = self._point("const", node, lambda: ast.copy_location(ast.Constant(new), node))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            rep = self._point("return", node, lambda: ast.copy_location(ast.Return(ast.Constant(None)), node))
        return rep if rep is not None else node


def _is_str(node: ast.BinOp) -> bool:
    return any(isinstance(s, (ast.JoinedStr,)) or (isinstance(s, ast.Constant) and isinstance(s.value, str))
               for s in (node.left, node.right))


def _src(node: ast.AST) -> str:
    if isinstance(node, ast.If):
        return f"if {ast.unparse(node.test)}:"
    if isinstance(node, ast.While):
        return f"while {ast.unparse(node.test)}:"
    text = ast.unparse(node).splitlines()
    return text[0] + (" ..." if len(text) > 1 else "")


def enumerate_mutants(rel: str, source: str) -> list[Mutant]:
    m = _Mutator()
    m.visit(ast.parse(source))
    out = []
    seen: dict[str, int] = {}
    for i, (op, line, before, after) in enumerate(m.points):
        base = f"{rel}::{op}::{before} -> {after}"
        seen[base] = seen.get(base, 0) + 1
        out.append(Mutant(rel, i, op, line, before, after, key=f"{base}#{seen[base]}"))
    return out


def mutate(source: str, index: int) -> str:
    tree = ast.parse(source)
    tree = _Mutator(index).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def sample(mutants: list[Mutant], cap: int | None) -> list[Mutant]:
    """Every k-th mutant from a fixed offset (seeded by the file name), at most ``cap``."""
    if cap is None or len(mutants) <= cap:
        return mutants
    k = -(-len(mutants) // cap)
    offset = int(hashlib.sha256(f"{SEED}:{mutants[0].file}".encode()).hexdigest(), 16) % k
    return mutants[offset::k][:cap]


# ---------------------------------------------------------------------------------- running
def _child(snapshot_src: Path, tests: list[str], marker: Path | None) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.path.insert(0, str(snapshot_src))
    os.chdir(ROOT)
    import pytest

    rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--import-mode=importlib",
                      "-W", "ignore", *tests])
    if marker is not None:
        mod = sys.modules.get("prunekit")
        marker.write_text(getattr(mod, "__file__", "") or "")
    os._exit(int(rc))


def run_tests(snapshot_src: Path, tests: list[str], timeout: float, marker: Path | None = None) -> tuple[str, float]:
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        try:
            _child(snapshot_src, tests, marker)
        finally:
            os._exit(3)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            dt = time.time() - t0
            if rc == 0:
                return "survived", dt
            if rc == 1:
                return "killed", dt
            return f"error(rc={rc})", dt  # collection/usage errors: the mutant broke the import
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.time() - t0
        time.sleep(0.05)


def _preimport() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    torch.set_num_threads(1)
    for name in ("torchvision", "hypothesis"):
        try:
            __import__(name)
        except ImportError:
            pass


def run(files: list[str], cap: int | None, timeout_factor: float, budget_s: float | None) -> dict:
    _preimport()
    tmp = Path(tempfile.mkdtemp(prefix="prunekit-mutation-"))
    snap = tmp / "src"
    shutil.copytree(SRC, snap, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp"))
    t_start = time.time()
    report: dict = {"files": {}, "platform": platform.platform(), "python": platform.python_version(),
                    "max_per_file": cap, "seed": SEED, "timeout_factor": timeout_factor,
                    "commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        for rel in files:
            tests = TARGETS[rel]
            path = snap / "prunekit" / rel
            original = path.read_text()
            allm = enumerate_mutants(rel, original)
            chosen = sample(allm, cap)
            marker = tmp / "marker"
            status, base_s = run_tests(snap, tests, 900, marker)
            entry = {"tests": tests, "mutants_total": len(allm), "mutants_run": 0, "baseline_s": round(base_s, 1), "cap": cap,
                     "baseline": status, "results": []}
            report["files"][rel] = entry
            if status != "survived" or not marker.read_text().startswith(str(snap)):
                entry["baseline"] = f"{status} (imported {marker.read_text() if marker.exists() else '?'})"
                print(f"{rel}: baseline not green ({entry['baseline']}); skipped", flush=True)
                continue
            timeout = max(20.0, timeout_factor * base_s)
            print(f"{rel}: {len(chosen)}/{len(allm)} mutants, tests {tests} (baseline {base_s:.1f}s)", flush=True)
            for m in chosen:
                if budget_s is not None and time.time() - t_start > budget_s:
                    entry["stopped"] = "time budget reached"
                    break
                try:
                    path.write_text(mutate(original, m.index))
                    m.status, m.seconds = run_tests(snap, tests, timeout)
                finally:
                    path.write_text(original)
                m.seconds = round(m.seconds, 1)
                entry["results"].append(asdict(m))
                entry["mutants_run"] += 1
                if m.status == "survived":
                    print(f"  SURVIVED {rel}:{m.line} [{m.op}] {m.before} -> {m.after}", flush=True)
            _score(entry)
            print(f"{rel}: score {entry['score']}", flush=True)
            _merge_and_write(report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _score(entry: dict) -> None:
    res = entry["results"]
    killed = sum(r["status"] != "survived" for r in res)
    entry["killed"], entry["survived"] = killed, len(res) - killed
    entry["score"] = round(killed / len(res), 3) if res else None


def _merge_and_write(report: dict) -> None:
    """Results of this run replace the same files' earlier results; other files are kept."""
    old = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"files": {}}
    merged = dict(old)
    merged.update({k: v for k, v in report.items() if k != "files"})
    merged["files"] = {**old.get("files", {}), **report["files"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(merged, indent=1) + "\n")
    write_md(merged)


def write_md(report: dict) -> None:
    reasons = json.loads(REASONS.read_text()) if REASONS.exists() else {}
    lines = ["# Mutation testing", "",
             "`benchmarks/mutation_testing.py`: classic AST mutants (comparison, arithmetic, constant, return, "
             "boolean, statement removal) applied one at a time to a snapshot copy of `src/`, each file against "
             "its own focused test selection (one forked pytest per mutant, `-x`, timeout = max(20 s, "
             f"{report.get('timeout_factor')} x the baseline)). Killed = a test failed, the run timed out or "
             "the import broke.", "",
             "Sampling: at most `cap` mutants per file (the table's column; `all` = every mutant), every k-th "
             f"from an offset fixed by the seed `{report.get('seed')}` and the file name (k = ceil(total / cap)). "
             "Commit at the last run: "
             f"{report.get('commit')}; {report.get('platform')}, Python {report.get('python')}.", "",
             "| file | tests | cap | mutants (run / total) | killed | survived | score |",
             "|---|---|---|---|---|---|---|"]
    tot_k = tot_r = 0
    for rel, e in sorted(report["files"].items()):
        if e.get("score") is None:
            lines.append(f"| {rel} | {', '.join(Path(t).name for t in e['tests'])} | {e.get('cap') or 'all'} | "
                         f"0 / {e['mutants_total']} | | | baseline not green: {e['baseline'].split(' (')[0]} |")
            continue
        tot_k += e["killed"]
        tot_r += e["mutants_run"]
        lines.append(f"| {rel} | {', '.join(Path(t).name for t in e['tests'])} | {e.get('cap') or 'all'} | "
                     f"{e['mutants_run']} / "
                     f"{e['mutants_total']} | {e['killed']} | {e['survived']} | {e['score']:.3f} |")
    if tot_r:
        lines.append(f"| **all** | | | {tot_r} | {tot_k} | {tot_r - tot_k} | **{tot_k / tot_r:.3f}** |")
    notes = reasons.get("_notes", [])
    if notes:
        lines += ["", "## History", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Surviving mutants", "",
              "Each with its reason: *equivalent* (no input can tell it apart), *not covered: test added* (a "
              "killing test was added after the run; the row stays as measured), *not covered: left* (why).", ""]
    for rel, e in sorted(report["files"].items()):
        surv = [r for r in e.get("results", []) if r["status"] == "survived"]
        if not surv:
            continue
        lines.append(f"### {rel}")
        lines.append("")
        for r in surv:
            why = reasons.get(r["key"], "unreviewed")
            lines.append(f"- line {r['line']} `[{r['op']}]` `{r['before']}` -> `{r['after']}`: {why}")
        lines.append("")
    OUT_MD.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="*", default=None, help=f"targets (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--max-per-file", type=int, default=60)
    ap.add_argument("--timeout-factor", type=float, default=4.0)
    ap.add_argument("--budget-min", type=float, default=None, help="stop starting mutants after this many minutes")
    ap.add_argument("--list", action="store_true", help="only count the mutants per file")
    ap.add_argument("--report-only", action="store_true", help="re-render the .md from the .json and the reasons")
    args = ap.parse_args()
    files = args.files or list(TARGETS)
    if args.report_only:
        write_md(json.loads(OUT_JSON.read_text()))
        return
    if args.list:
        for rel in files:
            print(rel, len(enumerate_mutants(rel, (SRC / "prunekit" / rel).read_text())))
        return
    run(files, args.max_per_file if args.max_per_file > 0 else None, args.timeout_factor,
        args.budget_min * 60 if args.budget_min else None)


if __name__ == "__main__":
    main()
