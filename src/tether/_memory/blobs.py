"""Memory values as content-addressed blobs; lists as appends to an earlier version.

A value is stored as JSON text (`_serde`, the same rules as checkpoint results) in the
`blobs` table, keyed by the hash of that text, so an identical value is stored once however
often it is written. A list is stored item by item: each item is a blob, and the version
records the item hashes. When the list starts with the items of the key's latest version
(a chat history written again after each turn), the version records only the hashes it
appends, and a reference to that version. Writing a 200-turn history after every turn thus
costs the new turn's messages and a few hashes, not the whole history again.

Reading a list walks the chain of versions back to one that holds a whole list: one query
for the key's version rows and one for the blobs, however long the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .._core import serde as _serde
from .._core.config import settings
from ..errors import StoreError
from ..store import MemoryRow, Store

_DIGEST_SIZE = 16


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


@dataclass(slots=True)
class Prepared:
    """A value encoded and hashed, ready to be laid out against the key's latest version."""

    is_list: bool
    texts: dict[str, str]  # hash -> JSON text of every blob of the value
    hashes: list[str]  # a list: its items' hashes in order; otherwise the value's one hash
    size: int  # bytes of the value's JSON


def prepare(value: Any, *, allow_pickle: bool, root: str) -> Prepared:
    """Encode a value (raises SerializationError, naming the path, before anything is
    written)."""
    if type(value) is not list:
        text = _serde.dumps(value, allow_pickle=allow_pickle, root=root)
        data = text.encode("utf-8", "surrogatepass")
        hashed = digest(data)
        return Prepared(False, {hashed: text}, [hashed], len(data))
    texts: dict[str, str] = {}
    hashes: list[str] = []
    size = 2 + max(len(value) - 1, 0)  # brackets and commas
    for i, item in enumerate(value):
        text = _serde.dumps(item, allow_pickle=allow_pickle, root=f"{root}[{i}]")
        data = text.encode("utf-8", "surrogatepass")
        hashed = digest(data)
        texts[hashed] = text
        hashes.append(hashed)
        size += len(data)
    # Items are stored one by one, but the value is read back whole: the limit is on the list.
    limit = settings().max_value_bytes
    if size > limit:
        raise _serde.too_large(root, size, limit)
    return Prepared(True, texts, hashes, size)


@dataclass(slots=True)
class Layout:
    """How a prepared value is stored: the version row's value columns, and its new blobs."""

    blob: str | None
    base_version: int | None
    items: str | None
    length: int | None
    blobs: list[tuple[str, str]]


def layout(store: Store, prepared: Prepared, latest: MemoryRow | None) -> Layout:
    """Lay a value out against the key's latest version: a list that starts with that
    version's items is stored as what it appends."""
    if not prepared.is_list:
        hashed = prepared.hashes[0]
        return Layout(hashed, None, None, None, [(hashed, prepared.texts[hashed])])
    return list_layout(store, prepared.hashes, latest, prepared.texts)


def list_layout(
    store: Store, hashes: list[str], latest: MemoryRow | None, texts: dict[str, str] | None = None
) -> Layout:
    """Lay a list of item hashes out against the key's latest version (see `extend`).
    `texts` (hash -> JSON text) gives the blobs of the appended items; without it (a copy
    of a list already stored) there are no new blobs."""
    base, appended = extend(store, hashes, latest)
    # Only the appended items can be new blobs: the base's items were stored with it.
    blobs = [] if texts is None else [(h, texts[h]) for h in dict.fromkeys(appended)]
    return Layout(None, base, compact(appended), len(hashes), blobs)


def extend(
    store: Store, hashes: list[str], latest: MemoryRow | None
) -> tuple[int | None, list[str]]:
    """(base version, appended hashes) of a list against the key's latest version: that
    version and what follows its items, when the list starts with them; else (None, all)."""
    if (
        latest is not None
        and not latest.deleted
        and latest.items is not None
        and latest.length
        and latest.length <= len(hashes)
    ):
        previous = item_hashes(store, latest)
        if hashes[: len(previous)] == previous:
            return latest.version, hashes[len(previous) :]
    return None, hashes


def item_hashes(store: Store, row: MemoryRow) -> list[str]:
    """The hashes of a list version's items, following its chain of base versions."""
    if row.items is None:
        raise StoreError(f"memory version {row.version} of {row.key!r} is not a list")
    if row.base_version is None:
        return list(json.loads(row.items))
    versions = {
        r.version: r
        for r in store.memory_versions(row.scope, row.scope_id, row.key, up_to=row.version)
    }
    segments: list[list[str]] = []
    current: MemoryRow | None = row
    while current is not None:
        if current.items is None:
            raise StoreError(
                f"memory version {current.version} of {row.key!r} is not a list, but a later "
                "version is stored as an extension of it; the store is corrupt"
            )
        segments.append(json.loads(current.items))
        if current.base_version is None:
            break
        current = versions.get(current.base_version)
        if current is None:
            raise StoreError(f"memory key {row.key!r} lost a version its history refers to")
    return [h for segment in reversed(segments) for h in segment]


def stored_texts(store: Store, row: MemoryRow) -> tuple[bool, list[str]]:
    """(is a list, the JSON texts of its items, or of the value alone)."""
    hashes = item_hashes(store, row) if row.items is not None else [row.blob or ""]
    found = store.get_blobs(hashes)
    missing = [h for h in hashes if h not in found]
    if missing:
        raise StoreError(
            f"memory version {row.version} of {row.key!r} refers to {len(missing)} blob(s) "
            "that are not stored"
        )
    return row.items is not None, [found[h] for h in hashes]


def load(store: Store, row: MemoryRow) -> Any:
    """The value a (not deleted) version holds, with its types."""
    is_list, texts = stored_texts(store, row)
    if is_list:
        return [_serde.loads(t) for t in texts]
    return _serde.loads(texts[0])


def load_json(store: Store, row: MemoryRow) -> str:
    """The value as stored JSON text, without decoding it (no classes imported)."""
    is_list, texts = stored_texts(store, row)
    return "[" + ",".join(texts) + "]" if is_list else texts[0]


def compact(hashes: list[str]) -> str:
    return json.dumps(hashes, separators=(",", ":"))
