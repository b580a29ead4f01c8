"""Compilations after startup are counted and logged with dynamo's reason
(compile_watch.CompileWatch), on a tiny function compiled by inductor on the CPU."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from reranker.backends.transformers.compile_watch import CompileWatch  # noqa: E402

LOGGER = "reranker.backends.transformers.compile_watch"


def warnings_of(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_a_compilation_after_startup_is_counted_and_logged_with_its_reason(caplog):
    watch = CompileWatch()
    assert watch.install()

    def double_plus_one(x):
        return x * 2 + 1

    compiled = torch.compile(double_plus_one, dynamic=True)
    with watch.starting():  # what a backend compiles and warms up while it starts
        compiled(torch.ones(5))
        compiled(torch.ones(9))
    assert watch.recompiles == 0
    assert watch.report() == 0
    assert not warnings_of(caplog)

    compiled(torch.ones(33))  # dynamic: no new compilation
    assert watch.recompiles == 0
    compiled(torch.ones(1))  # size 1 is specialised: a request would pay for it
    assert watch.recompiles == 1
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert watch.report() == 1
        assert watch.report() == 0  # each one once
    (record,) = warnings_of(caplog)
    message = record.getMessage()
    assert "recompiled after startup" in message and "double_plus_one" in message
    assert "size mismatch" in message or "==" in message or "guard" in message.lower(), message
