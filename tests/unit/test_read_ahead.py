"""read_ahead: items computed by a worker thread, in order, errors raised in their place."""

from __future__ import annotations

import threading

import pytest

from reranker.backends.transformers.jobs import read_ahead


def test_items_come_in_order_from_another_thread():
    made_in = []

    def items():
        for i in range(5):
            made_in.append(threading.get_ident())
            yield i

    assert list(read_ahead(items())) == [0, 1, 2, 3, 4]
    assert set(made_in) and threading.get_ident() not in made_in


def test_an_error_is_raised_after_the_items_before_it():
    def items():
        yield "a"
        yield "b"
        raise ValueError("tokenizer broke")

    got = []
    with pytest.raises(ValueError, match="tokenizer broke"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == ["a", "b"]


def test_a_caller_that_stops_early_leaves_no_worker_behind():
    finished = threading.Event()

    def items():
        yield from range(100)
        finished.set()

    for item in read_ahead(items()):
        if item == 3:
            break
    assert finished.wait(5)  # the worker ran to the end and exited
