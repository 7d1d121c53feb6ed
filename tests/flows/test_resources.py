"""sql/, expectations/ and reports/ are found as package data of flows.resources (fast checks;
the wheel itself is built and run in test_wheel.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flows.resources import expectations_dir, reports_dir, sql_dir

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ("sql", "expectations", "reports")


def test_the_resource_folders_are_the_repositorys_top_level_folders():
    # from a checkout the package data are the top-level folders themselves, not copies
    assert sql_dir() == (ROOT / "sql").resolve()
    assert expectations_dir() == (ROOT / "expectations").resolve()
    assert reports_dir() == (ROOT / "reports").resolve()
    assert (reports_dir() / "templates" / "report.html.j2").is_file()


def test_every_resource_file_is_declared_as_package_data():
    """A file the globs of pyproject.toml miss would be absent from the wheel only."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["flows.resources"]
    base = ROOT / "flows" / "resources"
    declared = {p.relative_to(base) for g in globs for p in base.glob(g) if p.is_file()}
    present = {
        Path(folder) / p.relative_to(ROOT / folder)
        for folder in RESOURCES
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.name != "README.md"
    }
    assert present - declared == set(), "add these to [tool.setuptools.package-data]"
