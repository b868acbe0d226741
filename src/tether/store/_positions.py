"""How positions are stored: text in program order.

A recorded call's position is text: `3` (the flow body's fourth call), `3.1.2` (a call
in a branch), `[key].0` (a call in a branch named with `tether.branch(key)`; the key
escaped so that it holds no `.`, `[` or `]`). The text does not sort in program order
(`10` < `2`), so the store and everything above it order positions by `sort_key`.
"""

from __future__ import annotations


def sort_key(position: str | int | None) -> tuple[tuple[int, int | str], ...]:
    """Program order: `2` < `3` < `3.0` < `3.1.2` < `3.10` < `4` < `[a].0` (named branches
    after the numbered ones of the same level, by key). None (the execution itself) first."""
    if position is None:
        return ()
    if isinstance(position, int):
        return ((0, position),)
    parts: list[tuple[int, int | str]] = []
    for part in position.split("."):
        if part.isdigit():
            parts.append((0, int(part)))
        elif part.startswith("[") and part.endswith("]"):
            parts.append((1, _unescape(part[1:-1])))
        else:  # not a position tether writes; sorted last, by its text
            parts.append((2, part))
    return tuple(parts)


def is_position(text: str) -> bool:
    """True for text of the form tether writes positions in (`3`, `3.1.2`, `[key].0`)."""
    if not text:
        return False
    for part in text.split("."):
        if part.isdigit():
            continue
        if len(part) >= 3 and part[0] == "[" and part[-1] == "]":
            continue
        return False
    return True


def before(position: str, other: str) -> bool:
    """True when `position` comes before `other` in program order."""
    return sort_key(position) < sort_key(other)


def _unescape(text: str) -> str:
    return text.replace("%2E", ".").replace("%5B", "[").replace("%5D", "]").replace("%25", "%")
