"""The distribution: its name, the llvmlite floor the tests prove, `farm.__version__`, the py.typed marker, and
linters kept out of what is published."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import farm

from .conftest import ROOT

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
# What the tests prove: llvmlite 0.42 crashes on import (ir.PointerType()), 0.44 fails the in-process path on
# opaque `ptr`; 0.45 passes the whole suite.
LLVMLITE_PROVEN = Version("0.45")


def requirement(name: str) -> Requirement:
    (found,) = (r for r in map(Requirement, PROJECT["dependencies"]) if r.name == name)
    return found


def test_installed_llvmlite_meets_the_declared_floor_and_the_floor_is_the_proven_one() -> None:
    import llvmlite

    declared = requirement("llvmlite").specifier
    assert declared.contains(llvmlite.__version__), f"llvmlite {llvmlite.__version__} is below {declared}"
    assert not declared.contains(str(Version("0.44.99"))), "the floor admits an llvmlite the tests proved broken"
    assert declared.contains(str(LLVMLITE_PROVEN))


def test_the_distribution_is_not_named_farm() -> None:
    # `pip install farm` installs an NLP framework; farm's import package keeps its name, the distribution does not
    assert PROJECT["name"] == farm.DISTRIBUTION == "farm-rewrite"
    assert all(Requirement(r).name != "farm" for extra in PROJECT["optional-dependencies"].values() for r in extra)


def test_version_is_the_installed_distributions() -> None:
    try:
        installed = metadata.version(farm.DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pytest.skip("farm-rewrite is not installed (farm imported from the source tree): scripts/setup installs it")
    assert farm.__version__ == installed == PROJECT["version"]


def test_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert farm.__version__ == "0+unknown"
    Version(farm.__version__)  # still a valid version for whoever compares it


def test_linters_are_pinned_in_the_dev_group_not_in_a_published_extra() -> None:
    linters = {"mypy", "ruff", "import-linter"}
    published = {Requirement(r).name for extra in PROJECT["optional-dependencies"].values() for r in extra}
    assert not linters & published
    dev = {r.name: r for r in map(Requirement, PYPROJECT["dependency-groups"]["dev"])}
    assert linters <= set(dev)
    assert all(str(dev[name].specifier).startswith("==") for name in linters), "linters pinned: same verdict everywhere"


def test_py_typed_is_in_the_built_package(tmp_path: Path) -> None:
    """setuptools' build_py (what a wheel is made from) on a copy of the sources carries farm/py.typed."""
    pytest.importorskip("setuptools", reason="setuptools builds the package")
    for part in ("farm", "workers"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, tmp_path / part)
    build = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                            "--build-lib", str(tmp_path / "lib")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (tmp_path / "lib/farm/py.typed").is_file()
    assert (tmp_path / "lib/farm/cache/engine.py").is_file() and (tmp_path / "lib/workers/app.py").is_file()
