"""``import prunekit`` reaches every documented submodule, lazily."""
import subprocess
import sys

import prunekit


def test_every_submodule_is_reachable_from_the_package():
    for name in prunekit.SUBMODULES:
        module = getattr(prunekit, name)
        assert module.__name__ == f"prunekit.{name}"
    assert "sparsity" in dir(prunekit)


def test_old_names_of_moved_modules_reach_their_new_room():
    import importlib

    for old, new in prunekit.ALIASES.items():
        assert getattr(prunekit, old) is importlib.import_module(f"prunekit.{new}")
        assert old in dir(prunekit) and old not in prunekit.SUBMODULES
    assert prunekit.blocks.prune_blocks_ is prunekit.structure.blocks.prune_blocks_
    for name in prunekit.structure.SUBMODULES:
        assert getattr(prunekit.structure, name).__name__ == f"prunekit.structure.{name}"


def test_an_alias_to_a_missing_module_fails_loudly(monkeypatch):  # negative control for the alias table
    import pytest

    monkeypatch.setitem(prunekit.ALIASES, "moved_nowhere", "structure.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="prunekit.structure.no_such_module"):
        prunekit.moved_nowhere


def test_import_prunekit_stays_lazy_and_unknown_names_still_fail():
    code = ("import sys, prunekit\n"
            "assert 'prunekit.deploy' not in sys.modules and 'prunekit.llm' not in sys.modules\n"
            "prunekit.deploy\n"
            "assert 'prunekit.deploy' in sys.modules\n"
            "assert 'prunekit.structure' not in sys.modules\n"
            "prunekit.blocks\n"
            "assert 'prunekit.structure.blocks' in sys.modules and 'prunekit.structure.dead' not in sys.modules\n"
            "try:\n    prunekit.structure.nope\nexcept AttributeError as e:\n    print(e)\n"
            "try:\n    prunekit.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'prunekit' has no attribute 'nope'" in out.stdout
    assert "'prunekit.structure' has no attribute 'nope'" in out.stdout
