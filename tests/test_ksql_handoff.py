"""The inbox of an engine worker: what worker 0 handed on, by generation, bounded by records."""

from __future__ import annotations

import threading
import time

from survey_kit.ksql.handoff import Inbox


def chunk(partition: int, *offsets: int) -> tuple:
    where = ("survey-entries", partition)
    return where, [(where[0], partition, offset, 1_000 + offset, None, b"v", ()) for offset in offsets]


def test_fetches_come_out_in_order_up_to_a_batch():
    inbox = Inbox(limit=100)
    generation = inbox.renew()
    inbox.put(generation, [chunk(0, 0, 1, 2)])
    inbox.put(generation, [chunk(0, 3, 4), chunk(1, 0)])
    inbox.put(generation, [chunk(0, 5)])
    taken, drained = inbox.take(batch_size=4, wait=0)
    # whole fetches, until the batch is full: the second fetch takes it past 4 records
    assert [(where, [r[2] for r in run]) for where, run in taken] == [
        (("survey-entries", 0), [0, 1, 2]), (("survey-entries", 0), [3, 4]), (("survey-entries", 1), [0]),
    ]
    assert not drained
    taken, drained = inbox.take(batch_size=4, wait=0)
    assert [[r[2] for r in run] for _, run in taken] == [[5]] and drained


def test_a_new_generation_drops_what_was_handed_on_before():
    inbox = Inbox(limit=100)
    old = inbox.renew()
    inbox.put(old, [chunk(0, 0, 1)])
    new = inbox.renew()  # a rebuilt worker subscribes again: worker 0 reads again from its positions
    inbox.put(old, [chunk(0, 2)])  # still in the pipe when worker 0 took the new subscription
    inbox.put(new, [chunk(0, 0)])
    taken, _ = inbox.take(batch_size=10, wait=0)
    assert [[r[2] for r in run] for _, run in taken] == [[0]]


def test_a_full_inbox_holds_the_sender_until_records_are_taken():
    inbox = Inbox(limit=3)
    generation = inbox.renew()
    inbox.put(generation, [chunk(0, 0, 1, 2)])
    sent = threading.Event()

    def send() -> None:
        inbox.put(generation, [chunk(0, 3)])
        sent.set()

    sender = threading.Thread(target=send)
    sender.start()
    assert not sent.wait(0.3)  # 3 records held: the sender waits (worker 0 keeps the worker's pace)
    inbox.take(batch_size=10, wait=0)
    assert sent.wait(5)
    sender.join()
    taken, drained = inbox.take(batch_size=10, wait=0)
    assert [[r[2] for r in run] for _, run in taken] == [[3]] and drained


def test_a_closed_inbox_lets_a_waiting_sender_go():
    inbox = Inbox(limit=1)
    generation = inbox.renew()
    inbox.put(generation, [chunk(0, 0)])
    sender = threading.Thread(target=inbox.put, args=(generation, [chunk(0, 1)]))
    sender.start()
    time.sleep(0.1)
    inbox.close()
    sender.join(5)
    assert not sender.is_alive()

