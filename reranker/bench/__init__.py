"""Benchmarks: synthetic workloads, ``reranker bench`` against the raw engine, and the
Markdown report of bench records."""
