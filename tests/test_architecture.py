"""The architecture's bars: no import cycles and the layers of pyproject.toml's import-linter
contracts (see ARCHITECTURE.md), every module placed in a layer, and no module over 450 lines."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "abexrat"
MAX_LINES = 450


def test_import_linter_contracts_are_kept() -> None:
    pytest.importorskip("importlinter")  # the test extra installs it
    # This checkout's package, whatever copy of abexrat the environment has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    r = subprocess.run([*cmd, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_every_top_level_module_has_a_layer() -> None:
    """A module left out of the layers contract would be free to import anything (and the core
    anything above it)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    placed = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    modules = {f"abexrat.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    packages = {f"abexrat.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert not (modules | packages) - placed, f"not in a layer: {sorted((modules | packages) - placed)}"


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
