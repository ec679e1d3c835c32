"""The ``crlearn`` command: it parses, calls the library and prints, nothing more."""

from crlearn.cli.main import main

__all__ = ["main"]
