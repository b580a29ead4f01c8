"""Tokenising a long list of texts, or many requests, on several threads at once.

A Rust tokenizer releases the GIL while it encodes, so slices of one list encoded on
several threads run in parallel, whether or not the tokenizer's own parallelism is on
(``TOKENIZERS_PARALLELISM=false``, often set to silence its fork warning, or switched off
by the library itself in a forked process, makes each ``encode_batch`` one thread). A
1,000-document request is ~540,000 tokens: one thread takes about half a second for it,
half of what a GPU takes to score it at the 0.6B size.

One pool of threads serves every caller. A caller waiting for work it handed to the pool
takes back what no thread has started yet and runs it itself, so work that hands out work
(a request tokenised on a pool thread, its long document list sliced) never waits for a
thread that is itself waiting.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

A = TypeVar("A")
T = TypeVar("T")

MIN_SLICE = 16
"""Texts a slice holds at least: below that, a thread's hand-off costs more than it saves."""
MAX_THREADS = 8
"""Threads one call is spread over at most (the host's cores also launch GPU work and
serve HTTP)."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def default_threads() -> int:
    """Threads a call is spread over: the cores this process may use, at most
    :data:`MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, default_threads() - 1), thread_name_prefix="reranker-tokenize"
            )
        return _pool


def _result(future: Future[T], fn: Callable[[A], T], arg: A) -> T:
    """The result of ``future`` (``fn(arg)`` handed to the pool): computed here when no
    thread has started it, else waited for."""
    if future.cancel():
        return fn(arg)
    return future.result()


def encode_in_slices(
    encode: Callable[[list[str]], list[T]], texts: Sequence[str], threads: int | None = None
) -> list[T]:
    """``encode(texts)``, computed as contiguous slices on up to ``threads`` threads (the
    caller's one of them; default :func:`default_threads`), each slice at least
    :data:`MIN_SLICE` texts. ``encode`` must give each text's result independently of the
    others in its list; results come back in the order of ``texts``. An exception raised
    for any slice is raised here, once no slice is running any more."""
    items = list(texts)
    threads = default_threads() if threads is None else threads
    count = min(threads, len(items) // MIN_SLICE)
    if count <= 1:
        return encode(items)
    bounds = [len(items) * k // count for k in range(count + 1)]
    slices = [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    pool = _shared_pool()
    later = [(pool.submit(encode, part), part) for part in slices[1:]]
    try:
        out = list(encode(slices[0]))
        for future, part in later:
            done: list[T] = _result(future, encode, part)
            out.extend(done)
    except BaseException:
        for future, _ in later:
            if not future.cancel():
                future.exception()  # waits: no slice outlives the call
        raise
    return out


def map_in_order(
    fn: Callable[[A], T], items: Iterable[A], threads: int | None = None
) -> Iterator[T]:
    """``fn(item)`` for each item, in order, up to ``threads`` of them computed at once
    ahead of the consumer (default :func:`default_threads`): a call's many small requests
    are tokenised side by side rather than one after the other. ``fn`` raising for an
    item raises where that item's result is taken."""
    threads = default_threads() if threads is None else threads
    queue = iter(items)
    if threads <= 1:
        yield from map(fn, queue)
        return
    pool = _shared_pool()
    ahead: deque[tuple[Future[T], A]] = deque(
        (pool.submit(fn, item), item) for item in islice(queue, threads)
    )
    try:
        while ahead:
            future, item = ahead.popleft()
            for following in islice(queue, 1):
                ahead.append((pool.submit(fn, following), following))
            yield _result(future, fn, item)
    finally:  # the consumer stopped early, or an item raised: start nothing more
        for future, _ in ahead:
            future.cancel()
