"""The dependency floors in pyproject.toml match docs/security.md's CVE table, the installed versions
satisfy them, and torch still admits 2.14.1."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, list[Requirement]] = {}
    for text in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        requirement = Requirement(text)
        found.setdefault(requirement.name.lower(), []).append(requirement)
    return found


def documented_floors() -> dict[str, Version]:
    """package -> floor from the `floor` column of docs/security.md's dependency table."""
    floors = {}
    for line in (ROOT / "docs" / "security.md").read_text().splitlines():
        for name, version in re.findall(r"`([a-z0-9_-]+)>=([0-9][0-9.]*)", line):
            floors[name] = Version(version)
    return floors


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", ">", "==")]
    return max(bounds) if bounds else None


def test_every_documented_floor_is_in_pyproject():
    declared = requirements()
    floors = documented_floors()
    assert {"pillow", "python-multipart", "starlette", "fastapi", "h11", "torch", "onnx"} <= set(floors)
    for name, floor in floors.items():
        assert name in declared, f"{name} is in docs/security.md but not in pyproject.toml"
        for requirement in declared[name]:
            bound = lower_bound(requirement)
            assert bound is not None and bound >= floor, f"{requirement} is below the documented floor {floor}"


def test_torch_still_admits_2_14_1():
    for requirement in requirements()["torch"]:
        assert requirement.specifier.contains("2.14.1"), requirement


@pytest.mark.parametrize("name", sorted(documented_floors()))
def test_the_installed_version_satisfies_the_floor(name):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed here")
    for requirement in requirements()[name]:
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed, str(requirement))
