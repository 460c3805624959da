"""The import-linter contract in pyproject.toml is live: an upward import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_tree_keeps_the_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "fastproxy", tmp_path / "fastproxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    schemas = tmp_path / "fastproxy" / "core" / "schemas.py"
    schemas.write_text(schemas.read_text() + "\nimport fastproxy.proxy.handler  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "fastproxy.core.schemas is not allowed to import fastproxy.proxy" in result.stdout
