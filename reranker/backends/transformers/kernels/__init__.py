"""Triton kernels of the transformers GPU stack, each with a torch reference and a
self-check that runs before it is used."""
