"""The `yieldrank` command line: one typer app, each command a thin wrapper over plain functions."""

from __future__ import annotations

from typing import Annotated

import typer

from flows import __version__

app = typer.Typer(
    name="yieldrank",
    help="Rank fab sub-processes by their impact on final yield with hierarchical GLMs.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"yieldrank {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Rank fab sub-processes by their impact on final yield."""


@app.command()
def demo(
    out: Annotated[
        str, typer.Option(help="Folder for the demo's database, drops and reports.")
    ] = "runs/demo",
) -> None:
    """Simulate a small fab and run the whole yield job on embedded defaults."""
    from flows.demo import run_demo

    run_demo(out)


if __name__ == "__main__":
    app()
