"""``python -m flowerfast`` runs the command-line interface."""

from flowerfast.cli import main

main()
