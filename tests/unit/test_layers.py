"""The shape guards tests/run applies before pytest: ruff is clean, the layer contracts hold,
and both can fail (a guard that passes on a broken tree guards nothing)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONTRACTS = ("api", "providers", "routing", "foundation", "store")      # setup.cfg [importlinter:contract:*]


def _tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{path} missing: install the test extras (pip install -e '.[test]')"
    return str(path)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return _run([_tool("lint-imports"), "--no-logo", "--no-cache", "setup.cfg"], cwd)


def test_ruff_is_clean():
    result = _run([_tool("ruff"), "check", "--no-cache", "."], REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_a_real_slip(tmp_path):
    (tmp_path / "slip.py").write_text("import os\n\n\ndef f():\n    return undefined_name\n")
    result = _run([_tool("ruff"), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                   str(tmp_path / "slip.py")], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout and "F821" in result.stdout


def test_layer_contracts_are_kept():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout, result.stdout


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def _add_import(root: Path, module: str, statement: str) -> None:
    with (root / module).open("a", encoding="utf-8") as handle:
        handle.write(f"\n{statement}  # a layer violation planted by tests/unit/test_layers.py\n")


def test_each_contract_breaks_on_a_forbidden_import(tmp_path):
    root = _copy_of_the_package(tmp_path)
    clean = _lint_imports(root)
    assert clean.returncode == 0, clean.stdout + clean.stderr      # the copy is what is analysed

    _add_import(root, "gateway/api/models.py", "import gateway.routing.policy")
    _add_import(root, "gateway/providers/sse.py", "import gateway.service")
    _add_import(root, "gateway/routing/selection.py", "import gateway.settings")
    _add_import(root, "gateway/types.py", "import flask")
    _add_import(root, "gateway/store/shared_memory.py", "import gateway.routing.policy")
    broken = _lint_imports(root)

    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"Contracts: 0 kept, {len(CONTRACTS)} broken." in broken.stdout, broken.stdout
    for planted in ("gateway.api.models -> gateway.routing.policy", "gateway.providers.sse -> gateway.service",
                    "gateway.routing.selection -> gateway.settings", "gateway.types -> flask",
                    "gateway.store.shared_memory -> gateway.routing.policy"):
        assert planted in broken.stdout, f"{planted!r} not reported:\n{broken.stdout}"


def test_errors_and_types_may_not_import_each_other(tmp_path):
    root = _copy_of_the_package(tmp_path)
    _add_import(root, "gateway/errors.py", "from gateway import types")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gateway.errors -> gateway.types" in result.stdout, result.stdout
