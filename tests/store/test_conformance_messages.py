"""Conformance suite for messages: input sent to a wait before the flow reaches it.

Written against the abstract `tether.store.Store` interface only (see
test_conformance_waits.py): one message per wait, and of a send and an input exactly one wins.
"""

from __future__ import annotations

import pytest
from _rows import T0, get, race, start
from test_conformance_waits import wait_named, wait_row, waiting

from tether.store import MessageRow, Sent, Store


def message(value: str = "1", *, execution_id: str = "e1", name: str = "w") -> MessageRow:
    return MessageRow(execution_id, name, value, "sent", "sender", T0 + 4)


def statuses(store: Store, execution_id: str = "e1") -> dict[str, str]:
    return {m.name: m.status for m in store.get_messages(execution_id)}


def test_a_message_to_a_wait_not_reached_is_kept_and_a_second_is_refused(store: Store) -> None:
    start(store, "e1", "tok")
    assert store.send_message(message("1"), validated=False, now=T0 + 4) is Sent.STORED
    assert store.send_message(message("2"), validated=False, now=T0 + 5) is Sent.DUPLICATE
    (kept,) = store.get_messages("e1")
    assert (kept.name, kept.value, kept.status, kept.sent_by) == ("w", "1", "sent", "sender")
    assert get(store).status == "running", "a running execution is left as it is"


def test_a_message_to_a_pending_wait_resolves_it_only_once_validated(store: Store) -> None:
    waiting(store)
    assert store.send_message(message("7"), validated=False, now=T0 + 4) is Sent.VALIDATE
    assert wait_named(store, "e1", "w").status == "pending"
    assert get(store).status == "waiting"
    assert store.send_message(message("7"), validated=True, now=T0 + 4) is Sent.DELIVERED
    wait = wait_named(store, "e1", "w")
    assert (wait.status, wait.value, wait.resolved_by) == ("resolved", "7", "sender")
    assert get(store).status == "queued"
    assert store.get_messages("e1") == [], "given at once: no message is kept"
    assert store.send_message(message("8"), validated=True, now=T0 + 5) is Sent.ANSWERED


def test_a_message_to_a_waiting_execution_makes_it_runnable(store: Store) -> None:
    waiting(store, wait="other")
    assert store.send_message(message(name="later"), validated=False, now=T0 + 4) is Sent.STORED
    assert get(store).status == "queued"
    assert wait_named(store, "e1", "other").status == "pending"


def test_messages_to_finished_missing_and_non_input_waits_are_refused(store: Store) -> None:
    assert store.send_message(message(), validated=False, now=T0) is Sent.NOT_FOUND
    waiting(store, wait="nap", kind="sleep", wake_at=T0 + 100)
    assert store.send_message(message(name="nap"), validated=True, now=T0) is Sent.NOT_INPUT
    store.request_cancel("e1", now=T0 + 5)
    assert store.send_message(message(name="x"), validated=False, now=T0) is Sent.FINISHED
    assert store.get_messages("e1") == []


def test_the_holder_delivers_a_message_and_input_is_refused_meanwhile(store: Store) -> None:
    token = start(store, "e1", "tok")
    assert store.send_message(message("5"), validated=False, now=T0 + 4) is Sent.STORED
    assert store.create_wait(token, wait_row("e1", "w"))
    # The flow reached the wait and is delivering: an input now would be a second winner.
    assert not store.resolve_wait("e1", "w", status="resolved", value="9", by="x", now=T0 + 5)
    assert store.send_message(message("6"), validated=True, now=T0 + 5) is Sent.DUPLICATE
    assert not store.deliver_message("e1", "stale", "w", value="5", error=None, now=T0 + 6)
    assert store.deliver_message("e1", token, "w", value="5", error=None, now=T0 + 6)
    wait = wait_named(store, "e1", "w")
    assert (wait.status, wait.value, wait.resolved_by) == ("resolved", "5", "sender")
    assert statuses(store) == {"w": "delivered"}


def test_a_rejected_message_leaves_the_wait_pending_for_input(store: Store) -> None:
    token = start(store, "e1", "tok")
    assert store.send_message(message('"x"'), validated=False, now=T0 + 4) is Sent.STORED
    assert store.create_wait(token, wait_row("e1", "w"))
    assert store.deliver_message("e1", token, "w", value=None, error="not an int", now=T0 + 5)
    (rejected,) = store.get_messages("e1")
    assert (rejected.status, rejected.error) == ("rejected", "not an int")
    assert wait_named(store, "e1", "w").status == "pending"
    assert store.resolve_wait("e1", "w", status="resolved", value="3", by="x", now=T0 + 6)


@pytest.mark.parametrize("reached", [False, True])
def test_of_concurrent_sends_and_inputs_exactly_one_wins(store: Store, reached: bool) -> None:
    # Half the contenders send, half give input. Before the wait is reached, the sends race
    # for the one message (input finds no wait); once it is pending, all race for the wait.
    if reached:
        waiting(store)
    else:
        start(store, "e1", "tok")
    contenders = 8
    won: dict[int, bool] = {}

    def contend(i: int) -> None:
        if i % 2:
            sent = store.send_message(message(str(i)), validated=True, now=T0 + 4)
            won[i] = sent in (Sent.STORED, Sent.DELIVERED)
        else:
            # Before the wait is recorded there is nothing to resolve: input cannot win.
            won[i] = store.resolve_wait(
                "e1", "w", status="resolved", value=str(i), by="x", now=T0 + 4
            )

    race(contenders, contend)
    winners = [i for i, ok in won.items() if ok]
    assert len(won) == contenders and len(winners) == 1
    if reached:
        assert wait_named(store, "e1", "w").value == str(winners[0])
        assert store.get_messages("e1") == []
    else:
        (kept,) = store.get_messages("e1")
        assert kept.value == str(winners[0])


def test_prune_deletes_messages(store: Store) -> None:
    token = start(store, "e1", "tok")
    assert store.send_message(message(), validated=False, now=T0 + 4) is Sent.STORED
    assert store.finish("e1", token, status="cancelled", result=None, error=None, now=T0 + 5)
    assert store.prune(before=T0 + 1e9, statuses=["cancelled"], dry_run=False) == 1
    assert store.get_messages("e1") == []


def test_a_retry_that_forgets_the_wait_lets_a_new_message_replace_the_delivered_one(
    store: Store,
) -> None:
    token = start(store, "e1", "tok")
    assert store.send_message(message("1"), validated=False, now=T0 + 4) is Sent.STORED
    assert store.create_wait(token, wait_row("e1", "w"))
    assert store.deliver_message("e1", token, "w", value="1", error=None, now=T0 + 5)
    assert store.finish("e1", token, status="failed", result=None, error=None, now=T0 + 6)
    assert store.reset_for_retry("e1", positions=[], waits=["w"], now=T0 + 7)
    assert store.send_message(message("2"), validated=False, now=T0 + 8) is Sent.STORED
    (kept,) = store.get_messages("e1")
    assert (kept.value, kept.status, kept.error, kept.delivered_at) == ("2", "sent", None, None)
