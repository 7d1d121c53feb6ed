"""The built wheel carries what the product needs (sql/, expectations/, reports/) and runs.

Builds the wheel of this checkout, installs it with `--no-deps` into a fresh venv that sees
the test environment's dependencies through a .pth file (no network), and runs the installed
`yieldrank demo` from a folder outside the checkout, without PYTHONPATH: the checkout cannot
stand in for anything the wheel lacks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what setuptools needs to build the wheel; the links in flows/resources/ point into it
SOURCES = ("pyproject.toml", "README.md", "hglm", "flows", "sql", "expectations", "reports")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(dest: Path, work: Path) -> Path:
    """The wheel of this checkout, built from a copy (the build leaves nothing in the checkout)."""
    src = work / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(
                path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(path, src / name)
    can_build_here = importlib.util.find_spec("wheel") or importlib.util.find_spec(
        "setuptools.command.bdist_wheel"
    )
    # without an isolated build, nothing is downloaded; otherwise pip fetches setuptools from
    # the configured index (as `pip install .` would)
    isolation = ["--no-build-isolation"] if can_build_here else []
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dest), str(src)],
        timeout=600,
    )
    (wheel,) = dest.glob("yieldrank-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_demo(tmp_path):
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
    # the dependencies, already installed here, without the network; appended after the venv's
    # own site-packages, and not processed as a site dir (the editable install's .pth is ignored)
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site) / "test-dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], timeout=300)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PREFECT_")
    }
    env["PREFECT_HOME"] = str(outside / "prefect-home")
    where = _run(
        [str(python), "-c", "import flows.resources as r; print(r.sql_dir())"], cwd=outside, env=env
    ).stdout.strip()
    assert Path(where).is_relative_to(site), f"resources found outside the wheel: {where}"

    done = _run(
        [str(venv / "bin" / "yieldrank"), "demo", "--out", "demo", "--lots", "24"],
        cwd=outside,
        env=env,
        timeout=900,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("report: "), done.stdout
    report = Path(last.removeprefix("report: "))
    assert report.is_file() and report.is_relative_to(outside / "demo")
    html = report.read_text(encoding="utf-8")
    assert "<style>" in html and "Loss by layer" in html  # the template and its CSS
    assert report.with_suffix(".pdf").is_file()
