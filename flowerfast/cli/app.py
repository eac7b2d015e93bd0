"""The typer application that every command module registers its commands on."""

from __future__ import annotations

import typer

from flowerfast import __version__
from flowerfast.cli.failures import OneLineUsageErrors

app = typer.Typer(
    name="flowerfast",
    cls=OneLineUsageErrors,
    help="Fine-tune pretrained image classifiers on a folder of photos (one folder per class).",
    add_completion=True,  # --install-completion and --show-completion for bash, zsh, fish, PowerShell
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flowerfast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Fine-tune pretrained image classifiers on a folder of photos (one folder per class)."""
