"""Execution ids and lease tokens stay unique without reading the OS's randomness each time:
across many, across threads, and in a forked child (which must not repeat its parent's)."""

from __future__ import annotations

import os
import threading

from tether._runtime import ids


def test_ids_and_tokens_made_at_once_on_many_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        for _ in range(20_000):
            out.append(ids.new_execution_id())
            out.append(ids.new_token())

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 160_000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then gone without running the parent's cleanup
        os.write(write, " ".join(ids.new_token() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {ids.new_token() for _ in range(100)}
    assert len(child) == 100 and not child & parent
