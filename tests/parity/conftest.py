import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

try:
    import torch
except ImportError:  # the vLLM venvs' runs of this folder skip its torch tests
    torch = None
if torch is not None and not torch.cuda.is_available():
    # Triton kernels (the fused q/k-norm + RoPE one) run in Triton's CPU interpreter here:
    # set before Triton is imported, which reads it when a kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")
