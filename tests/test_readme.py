"""The README is a contract: its Python blocks run (pytest-markdown-docs, in a scratch folder), its
command lines parse, the names it mentions exist, its set-up commands are the Makefile's and CI's,
and it stays short. The docs' guide (docs/guide.md) is held to the same: its blocks run, its names exist."""
from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
MAX_CHARS = 12_500  # "at most about 12,000 characters" (issue #16 item 8)


def fences(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``lang`` (the info string's first word) in ``text``."""
    return [m.group(2) for m in re.finditer(r"^```(\S*)[^\n]*\n(.*?)^```", text, re.S | re.M) if m.group(1) == lang]


def run_markdown(paths: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """Run pytest-markdown-docs on ``paths`` in ``cwd`` (files the blocks write land there)."""
    cmd = [sys.executable, "-m", "pytest", "--markdown-docs", "-p", "no:cacheprovider", "-W",
           "ignore::UserWarning", *map(str, paths)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_readme_and_guide_python_blocks_run(tmp_path: Path) -> None:
    n = len(fences(README.read_text(), "python"))
    assert n >= 4
    n += len(fences(GUIDE.read_text(), "python"))
    proc = run_markdown([README, GUIDE], tmp_path)  # one process: torch is imported once
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(rf"\b{n} passed\b", proc.stdout), proc.stdout[-2000:]  # every block ran, none skipped


def test_markdown_runner_flags_a_failing_block(tmp_path: Path) -> None:  # negative control
    bad = tmp_path / "bad.md"
    bad.write_text("# x\n\n```python\nassert sum([1, 1]) == 3\n```\n")
    proc = run_markdown([bad], tmp_path)
    assert proc.returncode == 1 and "1 failed" in proc.stdout


def test_readme_is_short() -> None:
    assert len(README.read_text()) <= MAX_CHARS


def test_setup_commands_are_the_makefiles_and_ci_runs_the_test_command() -> None:
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in fences(setup, "sh")[0].splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target!r}"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci


def command_lines(text: str) -> list[list[str]]:
    """The prunekit command lines of the README's sh blocks, as argument lists after ``prunekit``."""
    out = []
    for block in fences(text, "sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "prunekit":
                out.append(words[1:])
            elif "prunekit.cli" in words:  # torchrun ... -m prunekit.cli SUBCOMMAND ...
                out.append(words[words.index("prunekit.cli") + 1:])
    return out


def parses(argv: list[str]) -> bool:
    from prunekit.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def parse_in_order(lines: list[list[str]], where: Path) -> list[str]:
    """Parse the command lines in ``where`` as a user running them in order would: files the README
    names as the user's own (``*.py``, recipes under examples/) exist, and a folder named by ``--out``
    exists as a prunekit output folder (its manifest) for the lines after it. Returns the rejected lines."""
    import os
    import shutil

    from prunekit.recipes.folder import MANIFEST

    shutil.copytree(ROOT / "examples", where / "examples")
    bad = []
    cwd = os.getcwd()
    os.chdir(where)
    try:
        for argv in lines:
            for word in argv:
                if word.endswith(".py") or ".py:" in word:
                    (where / word.split(":")[0]).write_text("import torch\n\ndef build():\n    return torch.nn.Linear(2, 2)\n")
            if not parses(argv):
                bad.append(" ".join(argv))
            elif "--out" in argv:
                out = where / argv[argv.index("--out") + 1]
                out.mkdir(exist_ok=True)
                (out / MANIFEST).write_text("{}")
    finally:
        os.chdir(cwd)
    return bad


def test_readme_command_lines_parse(tmp_path: Path) -> None:
    lines = command_lines(README.read_text())
    assert len(lines) >= 3
    bad = parse_in_order(lines, tmp_path)
    assert not bad, f"README command lines the CLI rejects: {bad}"


def test_command_lines_run_in_order_need_the_earlier_output(tmp_path: Path) -> None:  # negative control
    assert parse_in_order([["measure", "r18"]], tmp_path) == ["measure r18"]


def test_command_line_check_flags_an_unknown_option(capsys: pytest.CaptureFixture) -> None:  # negative control
    assert not parses(["llm", "smollm2", "--method", "wanda", "--sparsity", "0.5", "--out", "x", "--bogus"])
    assert not parses(["no-such-command"])


def resolves(dotted: str) -> bool:
    """Whether ``prunekit.a.b.c`` names a module or an attribute reachable from one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("doc", [README, GUIDE], ids=["README", "guide"])
def test_every_prunekit_name_in_the_docs_exists(doc: Path) -> None:
    names = set(re.findall(r"\bprunekit(?:\.[A-Za-z_]\w*)+", doc.read_text()))
    names -= {"prunekit.cli"}  # checked above, as command lines
    assert len(names) >= 8
    missing = sorted(n for n in names if not resolves(n))
    assert not missing, f"{doc.name}: names that do not exist: {missing}"


def test_name_check_flags_a_missing_name() -> None:  # negative control
    assert resolves("prunekit.sparsity.sparsify_")
    assert not resolves("prunekit.sparsity.no_such_function")
    assert not resolves("prunekit.no_such_module.x")


def test_docs_hook_shows_sphinx_roles_as_plain_code() -> None:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.strip_roles(":class:<code>~prunekit.plan.Plan</code>") == "<code>Plan</code>"
    assert hooks.strip_roles(":meth:<code>step</code>") == "<code>step</code>"
    plain = "a ratio: <code>ratio:</code> stays"  # negative control: no role, nothing changes
    assert hooks.strip_roles(plain) == plain


def test_readme_recipes_load(tmp_path: Path) -> None:
    """Every yaml block of the README is a recipe the CLI accepts (field names, types, stages)."""
    from prunekit.recipes.yamlfile import RecipeError, load_recipe

    blocks = fences(README.read_text(), "yaml")
    assert blocks
    for i, text in enumerate(blocks):
        (tmp_path / f"r{i}.yaml").write_text(text)
        load_recipe(str(tmp_path / f"r{i}.yaml"))
    (tmp_path / "bad.yaml").write_text(blocks[0].replace("round_to", "round_too"))  # negative control
    with pytest.raises(RecipeError, match="round_to"):
        load_recipe(str(tmp_path / "bad.yaml"))
