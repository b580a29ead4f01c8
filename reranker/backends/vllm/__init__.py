"""Backends on vLLM: the engine wrapper every vLLM backend shares (engine.py), the
Qwen3-Reranker on generate and on the pooling runner, and cross-encoders on the pooling
runner."""
