"""``import prunekit`` reaches every documented submodule, lazily."""
import subprocess
import sys

import prunekit


def test_every_submodule_is_reachable_from_the_package():
    for name in prunekit.SUBMODULES:
        module = getattr(prunekit, name)
        assert module.__name__ == f"prunekit.{name}"
    assert "sparsity" in dir(prunekit)


def test_import_prunekit_stays_lazy_and_unknown_names_still_fail():
    code = ("import sys, prunekit\n"
            "assert 'prunekit.deploy' not in sys.modules and 'prunekit.llm' not in sys.modules\n"
            "prunekit.deploy\n"
            "assert 'prunekit.deploy' in sys.modules\n"
            "try:\n    prunekit.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'nope'" in out.stdout
