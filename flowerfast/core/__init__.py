"""Base utilities with no knowledge of models: errors, progress events, atomic files, statistics, figures."""
