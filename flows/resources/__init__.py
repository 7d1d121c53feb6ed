"""Where the product's resources are: `sql/`, `expectations/` and `reports/`.

They stay at the repository's top level (the product's specified layout) and are found as
package data of `flows.resources`, through `importlib.resources`, never by walking up from a
module's file. The three entries of this folder are symbolic links to the top-level folders:
from a checkout (editable install or `PYTHONPATH=checkout`) the links resolve to them, and
building the wheel copies what they point at into `flows/resources/` (pyproject.toml's
package-data), so an installed wheel carries real files at the same place. One lookup for
every way of running; the wheel test (tests/flows/test_wheel.py) keeps it true.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["expectations_dir", "reports_dir", "sql_dir"]


def _folder(name: str) -> Path:
    found = resources.files(__name__) / name
    # a wheel or checkout on the file system gives a real path; a zipped install is unsupported
    if not isinstance(found, Path) or not found.is_dir():
        raise FileNotFoundError(
            f"the resource folder {name!r} of yieldrank is missing ({found}): "
            "reinstall the package (its wheel carries sql/, expectations/ and reports/)"
        )
    return found.resolve()


def sql_dir() -> Path:
    """The `sql/` folder: schema, landing, staging, core and mart SQL files.

    Returns
    -------
    Path : the folder, resolved
    """
    return _folder("sql")


def expectations_dir() -> Path:
    """The `expectations/` folder: the Great Expectations suites of the data contract.

    Returns
    -------
    Path : the folder, resolved
    """
    return _folder("expectations")


def reports_dir() -> Path:
    """The `reports/` folder: Jinja2 templates (`templates/`) and assets (`static/`).

    Returns
    -------
    Path : the folder, resolved
    """
    return _folder("reports")
