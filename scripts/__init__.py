"""Reproduction, benchmark and data scripts; run them from the repository root as ``python -m scripts.NAME``."""
