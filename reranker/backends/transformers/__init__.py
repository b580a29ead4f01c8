"""Backends on Hugging Face transformers (PyTorch): the Qwen3-Reranker LM-head backend with
its GPU stack (packed batches, packed attention, CUDA graphs, compiled layers) and the
sequence-classification cross-encoder backend."""
