"""Quarterdeck: a terminal control center for supervising AI agents."""

__version__ = "0.1.0"
