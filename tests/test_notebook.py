"""The quick-start notebook needs only the base install (no ``dev`` extra) and runs."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def _runtime_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\s<>=!~\[;]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    return {n.lower().replace("_", "-") for n in names} | {"wsi-fusion"}


def test_notebook_imports_only_runtime_dependencies() -> None:
    modules = set()
    for source in _code_cells():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module.split(".")[0])
    assert "wsi_fusion" in modules
    runtime = _runtime_distributions()
    owners = packages_distributions()
    for module in sorted(modules):
        if module in sys.stdlib_module_names:
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if module == "wsi_fusion":
            continue  # the package itself (editable installs map it without a dist entry)
        assert dists & runtime, f"notebook imports {module} ({dists}), not a runtime dependency"


@pytest.mark.slow
def test_notebook_runs_without_the_dev_extra(tmp_path: Path) -> None:
    """Run every code cell in order with the dev extra's packages made unimportable."""
    script = "\n".join(
        [
            "import sys",
            "for name in ('matplotlib', 'pytest', 'ome_zarr_models', 'IPython'):",
            "    sys.modules[name] = None  # importing it now raises ImportError",
            *[f"exec(compile({src!r}, 'cell', 'exec'))" for src in _code_cells()],
            "print('fused shape', fused.shape)",
        ]
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fused shape (512, 512, 3)" in run.stdout
    assert (tmp_path / "demo_output" / "fused.ome.zarr").is_dir()
