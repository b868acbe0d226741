"""JSON text of a tree of JSON types, fast: what the PostgreSQL store sends as a batch and
what `tether._core.serde` stores. Here, with the store, because the store imports nothing of
tether but errors; serde uses it from here.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

__all__ = ["json_bytes"]

# pydantic_core (Rust) is ~10x faster than the json module for a 1 KB dict; the json module
# remains the fallback for what Rust strings cannot hold (lone surrogates), escaped as \\uXXXX.
_encode_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_to_json = pydantic_core.to_json


def json_bytes(tree: Any) -> bytes:
    """A tree of JSON types as UTF-8 JSON (what a database driver sends)."""
    try:
        return _to_json(tree)
    except (pydantic_core.PydanticSerializationError, UnicodeError):
        return _encode_ascii(tree).encode()
