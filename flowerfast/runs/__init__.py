"""The facts of a run: its configuration and the files of its folder, written and read in one place."""
