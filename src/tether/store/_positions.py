r"""How positions are stored: text in program order.

A recorded call's position is text: `3` (the flow body's fourth call), `3.1.2` (a call
in a branch), `[key].0` (a call in a branch named with `tether.branch(key)`; the key
escaped so that it holds no `.`, `[` or `]`). The text does not sort in program order
(`10` < `2`), so the store and everything above it order positions by `sort_key`.

People see positions another way (`display`, and `parse` back): a key written as the code
gave it, between brackets, with only `]` and `\` escaped by a backslash. So the call stored
as `[https://a%2Eexample/x].0` reads `[https://a.example/x].0`, and a key `a]b` reads
`[a\]b]`. What the CLI prints is what `--from` takes.
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


def display(position: str) -> str:
    """A stored position the way people read and write it: keys as they were given, `]` and
    `\\` in a key escaped with a backslash (`[a.b].0`, `[x\\]y].1`)."""
    if "[" not in position:
        return position
    parts = []
    for part in position.split("."):
        if len(part) >= 2 and part[0] == "[" and part[-1] == "]":
            key = _unescape(part[1:-1]).replace("\\", "\\\\").replace("]", "\\]")
            part = f"[{key}]"
        parts.append(part)
    return ".".join(parts)


def parse(text: str) -> str | None:
    """The stored position `text` names when written the way `display` writes it; None when
    it is not a position of that form. A backslash in a key takes the next character as is."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == "[":
            key: list[str] = []
            i += 1
            while i < n and text[i] != "]":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                key.append(text[i])
                i += 1
            if i >= n or not key:
                return None  # no closing bracket, or an empty key
            parts.append(f"[{escape_key(''.join(key))}]")
            i += 1
        else:
            start = i
            while i < n and "0" <= text[i] <= "9":
                i += 1
            if i == start:
                return None
            parts.append(text[start:i])
        if i == n:
            return ".".join(parts)
        if text[i] != ".":
            return None
        i += 1


def escape_key(key: str) -> str:
    """A branch key as it is stored between brackets: with no `.`, `[` or `]` in it."""
    return key.replace("%", "%25").replace(".", "%2E").replace("[", "%5B").replace("]", "%5D")


def _unescape(text: str) -> str:
    return text.replace("%2E", ".").replace("%5B", "[").replace("%5D", "]").replace("%25", "%")
