"""A deterministic synthetic workload for benchmarks: Q queries x D documents.

Documents get a spread of lengths (log-uniform between ``min_words`` and ``max_words``) so
batching by length matters, as it does on real search results.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "are",
    "be",
    "or",
    "an",
    "it",
    "was",
    "which",
    "system",
    "data",
    "model",
    "search",
    "query",
    "result",
    "document",
    "index",
    "ranking",
    "relevance",
    "score",
    "user",
    "network",
    "energy",
    "market",
    "policy",
    "health",
    "climate",
    "river",
    "city",
    "music",
    "history",
    "science",
    "code",
    "protein",
    "cell",
    "engine",
    "budget",
    "court",
    "language",
    "image",
    "sensor",
    "battery",
    "travel",
    "recipe",
    "garden",
    "theory",
    "vaccine",
    "protocol",
    "server",
    "memory",
    "latency",
    "throughput",
    "storage",
    "privacy",
    "contract",
]


@dataclass(frozen=True)
class Workload:
    """Queries, each with its own candidate documents."""

    queries: list[str]
    docs: list[list[str]]
    shape: dict = field(default_factory=dict)  # make_workload's arguments

    @property
    def pairs(self) -> int:
        """Number of (query, document) pairs."""
        return sum(len(d) for d in self.docs)


def make_workload(
    queries: int = 4,
    docs_per_query: int = 100,
    min_words: int = 40,
    max_words: int = 700,
    seed: int = 0,
) -> Workload:
    """Build the workload; the same arguments always give the same texts."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."

    qs = [text(rng.randint(4, 12)).rstrip(".") + "?" for _ in range(queries)]
    lo, hi = math.log(min_words), math.log(max_words)
    ds = [
        [text(int(math.exp(rng.uniform(lo, hi)))) for _ in range(docs_per_query)]
        for _ in range(queries)
    ]
    shape = dict(
        queries=queries,
        docs_per_query=docs_per_query,
        min_words=min_words,
        max_words=max_words,
        seed=seed,
    )
    return Workload(qs, ds, shape)
