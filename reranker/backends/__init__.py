"""Engines, one folder each (``transformers/``, ``vllm/``), and the loading helpers they
share. A backend module is imported only when its backend is chosen."""
