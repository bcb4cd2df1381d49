"""pyproject.toml and environment.yml declare the same dependencies."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO


def normalized(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.replace(" ", "")).lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {normalized(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = {normalized(r) for r in pip_section}
    assert listed - declared == set(), "in environment.yml only"
    assert declared - listed == set(), "in pyproject.toml only"
