"""The ``flowerfast`` command: thin typer commands over the library.

Each command module registers its commands on :data:`app` (``cli/app.py``); heavy imports
(fastai, torch) happen inside the commands, so ``flowerfast --help`` answers at once.
"""

from __future__ import annotations

from flowerfast.cli import check, compare, core, scoring, serve, use  # noqa: F401  (each module registers its commands)
from flowerfast.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    from flowerfast.cli.output import quiet_other_processes

    quiet_other_processes()  # under torchrun, rank 0 alone prints
    app()
