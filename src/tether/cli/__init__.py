"""The `tether` command (console script `tether.cli:main`): thin over Client and Worker."""

from ._app import app, main

__all__ = ["app", "main"]
