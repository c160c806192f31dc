import tomllib
from pathlib import Path


def test_licence_is_an_spdx_expression():
    # A TOML table (`{text = ...}`) makes setuptools >= 77 print a deprecation warning on every install.
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first to read an SPDX string
