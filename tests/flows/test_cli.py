"""The installed `yieldrank` entry point, run as a user runs it."""

import shutil
import subprocess
import sys
from pathlib import Path

import flows

YIELDRANK = shutil.which("yieldrank", path=str(Path(sys.executable).parent))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    assert YIELDRANK, "the yieldrank entry point is not installed in this environment"
    return subprocess.run([YIELDRANK, *args], capture_output=True, text=True, timeout=120)


def test_version_matches_the_package():
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"yieldrank {flows.__version__}"
    assert flows.__version__ != "0.0.0+unknown"


def test_help_lists_the_app_and_exits_zero():
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    assert "Rank fab sub-processes" in done.stdout


def test_unknown_command_fails_with_a_message():
    done = run_cli("no-such-command")
    assert done.returncode != 0
    assert "no-such-command" in (done.stderr + done.stdout)
