"""A/B comparison of two rerankers on the same (query, documents) lists: ``reranker compare``."""
