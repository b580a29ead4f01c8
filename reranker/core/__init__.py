"""The model-neutral core: the backend protocol and its options, request cleaning, dedup
and batching, typed errors, the backend registry. It names no model family and no engine."""
