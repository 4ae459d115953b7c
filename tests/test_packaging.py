"""pyproject's dependency list is complete: what src/umbra imports is declared, and an
installed Umbra runs with nothing but its declared dependencies.

Two checks, both offline:

* every module src/umbra imports (at any depth, lazy imports included) outside the
  standard library belongs, by ``importlib.metadata.packages_distributions()``, to a
  distribution pyproject declares;
* (slow) a fresh virtual environment without the system's site-packages gets only the
  transitive closure of the declared dependencies, taken file by file from the running
  environment's installed distributions (symlinks: no index, no download); ``pip install``
  of the project's wheel then resolves its dependencies against exactly that set,
  ``pip check`` finds it consistent, ``umbra --help`` runs from the installed script and
  every ``umbra.*`` module imports there.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "umbra"


def _declared() -> list[Requirement]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return [Requirement(text) for text in tomllib.load(f)["project"]["dependencies"]]


def _imported_top_levels(files: Iterable[Path]) -> dict[str, Path]:
    """Top-level module name -> first file importing it (absolute imports only)."""
    seen: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                seen.setdefault(name.split(".")[0], path)
    return seen


def undeclared_imports(files: Iterable[Path], declared: Iterable[str]) -> dict[str, str]:
    """Third-party top-level imports of ``files`` whose distribution is not in
    ``declared`` (module -> why)."""
    wanted = {canonicalize_name(name) for name in declared}
    owners = metadata.packages_distributions()
    problems: dict[str, str] = {}
    for module, path in _imported_top_levels(files).items():
        if module in sys.stdlib_module_names or module in {"umbra", "__future__"}:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists:
            problems[module] = f"imported in {path.name}, installed by no distribution"
        elif not dists & wanted:
            problems[module] = f"imported in {path.name}, from {sorted(dists)}: not declared"
    return problems


def test_every_import_of_src_is_a_declared_dependency() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    declared = [req.name for req in _declared()]
    assert undeclared_imports(files, declared) == {}


def test_an_undeclared_import_is_found(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nimport numpy\n\ndef f():\n    from scipy import stats\n    import torch.nn\n",
        encoding="utf-8",
    )
    problems = undeclared_imports([module], ["numpy", "torch"])
    assert set(problems) == {"scipy"} and "not declared" in problems["scipy"]
    assert undeclared_imports([module], ["numpy", "scipy", "torch"]) == {}


# -- an install from the declared dependencies only -----------------------------------------


def _closure(requirements: Iterable[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions the requirements need, transitively (markers evaluated
    for this interpreter, extras followed)."""
    found: dict[str, metadata.Distribution] = {}
    expanded: set[tuple[str, str]] = set()
    todo = [(req, "") for req in requirements]  # (requirement, extra it is listed under)
    while todo:
        req, listed_under = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": listed_under}):
            continue
        dist = metadata.distribution(req.name)  # a missing one is a failure in itself
        assert req.specifier.contains(dist.version, prereleases=True), (str(req), dist.version)
        name = canonicalize_name(req.name)
        found[name] = dist
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) not in expanded:
                expanded.add((name, extra))
                todo += [(Requirement(text), extra) for text in dist.requires or []]
    return found


def _link_distribution(dist: metadata.Distribution, site: Path) -> None:
    base = Path(str(dist.locate_file("")))
    for entry in dist.files or []:
        rel = Path(str(entry))
        if rel.parts[0] == ".." or "__pycache__" in rel.parts:
            continue  # console scripts live outside site-packages
        target = site / rel
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(base / rel)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="POSIX venv layout")
def test_installed_wheel_runs_with_declared_dependencies_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    project = tmp_path / "project"  # a copy: building writes build/ and *.egg-info
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(wheels), str(project)], check=True, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("umbra-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    closure = _closure(_declared())
    assert "umbra" not in closure
    for dist in closure.values():
        _link_distribution(dist, site)

    def run(*argv: str) -> str:
        done = subprocess.run(
            list(argv), env=env, cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    # pip resolves the wheel's declared dependencies against the linked set; no index
    run(str(python), "-m", "pip", "install", "--no-index", "-q", str(wheel))
    run(str(python), "-m", "pip", "check")
    assert "deploy" in run(str(venv / "bin" / "umbra"), "--help")
    imported = run(
        str(python),
        "-c",
        "import importlib, pkgutil, umbra\n"
        "assert 'site-packages' in umbra.__file__, umbra.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(umbra.__path__, 'umbra.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))",
    )
    assert int(imported) > 50
