"""Comparing trained runs: the comparison of architectures and its report."""
