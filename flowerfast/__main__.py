"""``python -m flowerfast`` runs the command-line interface."""

from .cli import main

main()
