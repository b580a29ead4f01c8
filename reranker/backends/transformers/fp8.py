"""FP8 (W8A8) linear layers for the transformers backends (``quantization: fp8``).

At load, each linear layer of the decoder (or encoder) layers is replaced by an
:class:`FP8Linear`: its weight becomes 8-bit float (e4m3) with one float32 scale per
output channel (row), and each call quantises its input per token (row) on the fly, so
the matmul runs on fp8 tensor cores through ``torch._scaled_mm`` (fp8 x fp8, both
scales applied to the result). ``fp8_fast_accum`` (the default) lets Hopper's tensor
cores keep their reduced-precision running sums through a whole dot product, as vLLM's
and torchao's fp8 matmuls do; off, the matmul adds them into float32 every 128-deep
block. (The CPU's reference kernel adds in float32 either way.)
Embeddings, norms and the score head (``lm_head``'s yes/no rows, a classifier) keep the
model's dtype.

Layers computed from one input are quantised as one weight, so the input is quantised
once and one matmul runs instead of several: a SiLU-gated MLP's gate and up projections
(``gate_up_proj``, then ``silu(gate) * up``; with :func:`fuse_gated_mlps`, the gating and
the quantisation of down's input as one Triton kernel, :mod:`.kernels.fp8_quant`, or
both products and the gating as one, :mod:`.kernels.fp8_swiglu`) and, where
``packed_attention`` stacked them, the attention's q/k/v projections (``qkv_proj``). The
single layers stay as views of the merged weight
(scales are per row, so a row block of the merged weight is exactly that layer
quantised alone), for code that calls them one by one. In compiled layers the RMSNorm in
front of those merged layers adds the residual, normalises and quantises each row in one
kernel and hands them :class:`QuantizedRows` (:func:`fuse_norm_quant`).

Where it runs: CUDA GPUs of compute capability 8.9 or newer (Ada, Hopper and later) and
the CPU, where torch's ``_scaled_mm`` has a reference kernel (slow, for tests: the same
quantisation, the same scales). Everything here traces under ``torch.compile`` (per-row
amax, divide, clamp, cast, ``_scaled_mm``) and is captured by CUDA graphs.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from reranker.backends.transformers.quantized_rows import QuantizedRows
from reranker.core.errors import ConfigError

# The largest finite float8 e4m3 (fn) value.
FP8_MAX = 448.0
# CUDA GPUs with fp8 tensor cores: Ada (8.9), Hopper (9.0) and newer.
MIN_CAPABILITY = (8, 9)
# The smallest scale: an all-zero row quantises to zeros instead of dividing by zero.
MIN_SCALE = 1e-12
# cuBLAS's fp8 matmul wants both the inner and the output widths in multiples of 16.
_ALIGN = 16


def fp8_unavailable(device: Any) -> str | None:
    """Why fp8 matmuls cannot run on ``device`` (a ``torch.device`` or its name), or
    None where they can: CUDA GPUs of compute capability 8.9+, and the CPU."""
    device = torch.device(device)
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return f"this torch ({torch.__version__}) has no float8 matmul (torch._scaled_mm)"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return (
                f"it needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper) with "
                f"fp8 tensor cores; {name} is {major}.{minor}"
            )
        return None
    if device.type == "cpu":
        return None
    return f"it runs on CUDA GPUs of compute capability 8.9+ or the CPU, not on {device.type}"


def check_device(device: Any, fast_accum: bool = False) -> None:
    """Raise :class:`ConfigError` where ``quantization: fp8`` cannot run on ``device``:
    the device is unsuitable, or a small fp8 matmul there (with ``fast_accum``, as the
    layers will run) disagrees with its reference."""
    why = fp8_unavailable(device) or self_check(device, fast_accum)
    if why:
        raise ConfigError(f"quantization: fp8, but {why}; set quantization: none")


def self_check(device: Any, fast_accum: bool = False) -> str | None:
    """Run one small :class:`FP8Linear` (``fast_accum``: see its doc) on ``device``
    against the matmul of its own dequantised operands: None where they agree, else why
    not."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=g))
    linear = linear.to(device=device, dtype=dtype)
    x = torch.randn(5, 64, generator=g).to(device=device, dtype=dtype)
    try:
        layer = FP8Linear.from_linear(linear, fast_accum)
        got = layer(x).float()
    except Exception as exc:  # a build without the kernel for this device
        return f"torch._scaled_mm failed here ({type(exc).__name__}: {exc})"
    q, scale = quantize_rows(x)
    want = (q.float() * scale) @ layer.dequantized_weight().t()
    error = (got - want).abs().max().item()
    if not error <= 0.02 * want.abs().max().item():
        return f"torch._scaled_mm disagrees with its reference here (error {error:.3g})"
    return None


def quantize_rows(x: Any) -> tuple[Any, Any]:
    """``x`` (rows, columns) as float8 e4m3 with one float32 scale a row, (rows, 1):
    ``x ~= q * scale``, each row's largest magnitude mapped to :data:`FP8_MAX`."""
    scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=MIN_SCALE)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fits(linear: Any) -> bool:
    """Whether ``linear`` is an ``nn.Linear`` the fp8 matmul takes: both widths in
    multiples of 16."""
    return (
        isinstance(linear, nn.Linear)
        and linear.in_features % _ALIGN == 0
        and linear.out_features % _ALIGN == 0
    )


class FP8Linear(nn.Module):
    """A linear layer with float8 e4m3 weights (one float32 scale per output channel)
    whose input is quantised per token at each call; the matmul is ``torch._scaled_mm``
    (fp8 x fp8, both scales applied; ``fast_accum``: the tensor cores' own running
    sums, else float32 ones), its result in the original layer's dtype. Build it with
    :meth:`from_linear` or :meth:`merged`.

    ``weight_t`` is the (in, out) transpose of a contiguous (out, in) fp8 weight: the
    column-major second operand ``_scaled_mm`` wants; ``scale`` is (1, out).
    """

    weight_t: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self, weight_t: Any, scale: Any, bias: Any, out_dtype: Any, fast_accum: bool = False
    ) -> None:
        super().__init__()
        self.fast_accum = fast_accum
        self.in_features, self.out_features = int(weight_t.shape[0]), int(weight_t.shape[1])
        self.register_buffer("weight_t", weight_t)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.out_dtype = out_dtype
        # how an input is quantised per row: in torch (inductor fuses it with what comes
        # before it), or a kernel (fuse_norm_quant gives o_proj the one-pass Triton one)
        self.quantize: Callable[[Any], tuple[Any, Any]] = quantize_rows

    @classmethod
    def from_linear(cls, linear: nn.Linear, fast_accum: bool = False) -> FP8Linear:
        """``linear`` quantised: its weight to fp8 with a scale per output channel (row);
        the bias, if any, stays in the layer's dtype."""
        return cls.merged([linear], fast_accum)

    @classmethod
    def merged(cls, linears: list[nn.Linear], fast_accum: bool = False) -> FP8Linear:
        """One layer computing ``linears`` (same input width, same dtype) side by side:
        their outputs concatenated in that order. Use :meth:`rows` for the views."""
        weight = torch.cat([layer.weight.detach() for layer in linears])
        scale = (weight.abs().amax(dim=1).float() / FP8_MAX).clamp(min=MIN_SCALE)
        q = (weight.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX)
        q = q.to(torch.float8_e4m3fn).contiguous()
        biases = [layer.bias for layer in linears]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [
                    b.detach() if b is not None else weight.new_zeros(layer.out_features)
                    for b, layer in zip(biases, linears, strict=True)
                ]
            )
        return cls(q.t(), scale[None, :].contiguous(), bias, weight.dtype, fast_accum)

    def rows(self, start: int, stop: int) -> FP8Linear:
        """The layer of output channels ``start:stop`` as a view of this one's weight
        (no copy): the same result as those columns of this layer's output."""
        bias = None if self.bias is None else self.bias[start:stop]
        return FP8Linear(
            self.weight_t[:, start:stop],
            self.scale[:, start:stop],
            bias,
            self.out_dtype,
            self.fast_accum,
        )

    def split(self, widths: list[int]) -> list[FP8Linear]:
        """Views of consecutive output blocks of ``widths`` channels (see :meth:`rows`)."""
        bounds = [0]
        for width in widths:
            bounds.append(bounds[-1] + width)
        return [self.rows(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]

    def dequantized_weight(self) -> Any:
        """The (out, in) float32 weight this layer multiplies by: fp8 values x scales."""
        return (self.weight_t.float() * self.scale).t()

    def forward(self, x: Any) -> Any:
        """``x @ W^T (+ bias)`` with ``x`` quantised per row (unless it comes as
        :class:`QuantizedRows`); any leading dims."""
        if isinstance(x, QuantizedRows):
            q, scale = x.q, x.scale
        else:
            q, scale = self.quantize(x.reshape(-1, x.shape[-1]))
        return self.quantized_forward(q, scale).view(*x.shape[:-1], self.out_features)

    def quantized_forward(self, q: Any, scale: Any) -> Any:
        """The layer on an input already quantised per row: ``q`` (rows, in) float8
        e4m3, ``scale`` (rows, 1) float32 (:func:`quantize_rows`) -> (rows, out)."""
        # cuBLAS's row-wise scaled fp8 matmul writes bfloat16 only; the CPU's any dtype
        # (read here, not at construction: ``.to(device)`` may move the layer)
        mm_dtype = torch.bfloat16 if self.weight_t.is_cuda else self.out_dtype
        out = torch._scaled_mm(
            q,
            self.weight_t,
            scale_a=scale,
            scale_b=self.scale,
            out_dtype=mm_dtype,
            use_fast_accum=self.fast_accum,
        )
        if self.bias is not None:
            out = out + self.bias
        return out.to(self.out_dtype)

    def extra_repr(self) -> str:
        """Widths and the bias, as ``nn.Linear`` shows them."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=float8_e4m3fn (per-channel scales), "
            f"fast_accum={self.fast_accum}"
        )


def quantize_layers(layers: Iterable[nn.Module], fast_accum: bool = False) -> int:
    """Replace the linear layers inside ``layers`` (a model's decoder or encoder layers:
    never its embeddings or its head) by :class:`FP8Linear` (``fast_accum``: see its
    doc), merging those that share an input (a SiLU-gated MLP's gate and up projections;
    stacked q/k/v). Layers whose widths the fp8 matmul does not take (:func:`fits`) keep
    their dtype. Returns how many fp8 matmuls the layers now run."""
    count = 0
    for layer in layers:
        for module in list(layer.modules()):
            count += _merge_gate_up(module, fast_accum) + _merge_qkv(module, fast_accum)
        for module in list(layer.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and fits(child):
                    setattr(module, name, FP8Linear.from_linear(child, fast_accum))
                    count += 1
    return count


def _merge_gate_up(mlp: nn.Module, fast_accum: bool) -> int:
    """A bias-free SiLU-gated MLP (``gate_proj``, ``up_proj``, ``down_proj``,
    ``act_fn``): gate and up as one fp8 layer (``gate_up_proj``), a forward over it."""
    names = ("gate_proj", "up_proj", "down_proj")
    parts = [getattr(mlp, name, None) for name in names]
    if not all(isinstance(p, nn.Linear) and p.bias is None and fits(p) for p in parts):
        return 0
    if type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
        return 0
    gate, up = parts[0], parts[1]
    assert isinstance(gate, nn.Linear) and isinstance(up, nn.Linear)
    if gate.out_features != up.out_features:
        return 0
    merged = FP8Linear.merged([gate, up], fast_accum)
    mlp.gate_up_proj = merged
    mlp.gate_proj, mlp.up_proj = merged.split([gate.out_features, up.out_features])
    mlp.forward = types.MethodType(_gated_forward(), mlp)
    return 1


def _gated_forward() -> Callable[..., Any]:
    """The fp8 MLP forward: one matmul for gate and up, SiLU-gated product, down (a
    closure, so that dynamo traces it as the layer's code)."""

    def forward(mlp: Any, x: Any) -> Any:
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return mlp.down_proj(nn.functional.silu(gate) * up)

    return forward


def fuse_gated_mlps(
    layers: Iterable[nn.Module],
    gated_quant: Callable[..., Any] | None = None,
    swiglu: Callable[..., Any] | None = None,
    quant: Callable[..., Any] | None = None,
) -> int:
    """Give each MLP whose gate and up projections :func:`quantize_layers` merged a
    forward through Triton kernels; returns how many MLPs took it. Either
    ``gated_quant`` (:func:`..kernels.fp8_quant.gated_quant_op`: after the merged fp8
    matmul, the SiLU gating and the quantisation of down's input in one pass), or
    ``swiglu`` (:func:`..kernels.fp8_swiglu.fused_op`: both fp8 products and the gating
    in one kernel, the products never written out) with ``quant``
    (:func:`..kernels.fp8_quant.quantize_op`) quantising its result for down."""
    if (gated_quant is None) == (swiglu is None) or (swiglu is None) != (quant is None):
        raise ValueError("pass gated_quant alone, or swiglu with quant")
    count = 0
    for layer in layers:
        for module in layer.modules():
            if isinstance(getattr(module, "gate_up_proj", None), FP8Linear) and isinstance(
                getattr(module, "down_proj", None), FP8Linear
            ):
                if gated_quant is not None:
                    forward = _gated_quant_forward(gated_quant)
                else:
                    assert swiglu is not None and quant is not None
                    forward = _kernel_gated_forward(swiglu, quant)
                module.forward = types.MethodType(forward, module)
                object.__setattr__(module, "accepts_quantized_rows", True)  # fuse_norm_quant
                count += 1
    return count


def fuse_norm_quant(
    layers: Iterable[nn.Module],
    norm_quant: Callable[..., Any],
    add_norm_quant: Callable[..., Any],
    quantize: Callable[..., Any] | None = None,
) -> int:
    """Give the RMSNorms in front of fp8 matmuls a form that adds the residual,
    normalises and quantises each row in one kernel (``norm_quant`` / ``add_norm_quant``:
    :func:`..kernels.fp8_quant.norm_quant_op` / :func:`..kernels.fp8_quant.add_norm_quant_op`),
    handing its consumer :class:`QuantizedRows`; returns how many norms took it.

    A norm takes it where what reads it accepts QuantizedRows (``accepts_quantized_rows``:
    the packed attention of ``packed_attention.fuse_qk_norm_rope`` over a stacked fp8
    q/k/v, an MLP of :func:`fuse_gated_mlps`). The decoder layers of
    ``speedups.carry_residuals`` call it (``add_norm_quant`` on the norm module); run
    otherwise, the norm computes as before. With ``quantize``
    (:func:`..kernels.fp8_quant.quantize_op`), the attention's output projection, whose
    input comes from the attention kernel, quantises it in one pass too.

    Pass the layers that carry their residual adds (all but the last): the last layer
    calls its norms as modules. Compiled one layer at a time, inductor reduces rows wider
    than 1,024 values in a loop: a 2,560-wide norm followed by the quantisation read the
    row three times."""
    count = 0
    for layer in layers:
        for module in layer.modules():
            attn: Any = getattr(module, "self_attn", None)
            pairs = (("input_layernorm", attn), ("post_attention_layernorm", "mlp"))
            for norm_name, reader in pairs:
                norm: Any = getattr(module, norm_name, None)
                if isinstance(reader, str):
                    reader = getattr(module, reader, None)
                if _takes_quantized_rows(reader) and _is_rms_norm(norm):
                    # a plain attribute, read by speedups' layers (not a submodule)
                    object.__setattr__(
                        norm, "add_norm_quant", _norm_quantizer(norm, norm_quant, add_norm_quant)
                    )
                    count += 1
            o_proj = getattr(attn, "o_proj", None)
            if quantize is not None and isinstance(o_proj, FP8Linear):
                o_proj.quantize = quantize
    return count


def _takes_quantized_rows(module: Any) -> bool:
    if not getattr(module, "accepts_quantized_rows", False):
        return False
    first = getattr(module, "qkv_proj", None) or getattr(module, "gate_up_proj", None)
    return isinstance(first, FP8Linear)


def _is_rms_norm(norm: Any) -> bool:
    return (
        type(norm).__name__.endswith("RMSNorm")
        and getattr(norm, "weight", None) is not None
        and getattr(norm, "variance_epsilon", None) is not None
    )


def _norm_quantizer(
    norm: nn.Module, norm_quant: Callable[..., Any], add_norm_quant: Callable[..., Any]
) -> Callable[[Any], tuple[Any, QuantizedRows]]:
    """``f(hidden_states)`` -> (the layer's input, its norm as QuantizedRows), where
    ``hidden_states`` is a tensor or a (residual, delta) pair to add first (a closure:
    dynamo traces it as the layer's code)."""

    def add_and_quantize(hidden_states: Any) -> tuple[Any, QuantizedRows]:
        weight, eps = norm.weight, float(norm.variance_epsilon)  # type: ignore[arg-type]
        if type(hidden_states) is tuple:  # (QuantizedRows is a tuple too: never passed here)
            residual, delta = hidden_states
            width = residual.shape[-1]
            total, q, scale = add_norm_quant(
                residual.reshape(-1, width), delta.reshape(-1, width), weight, eps
            )
            total = total.view(residual.shape)
        else:
            total = hidden_states
            q, scale = norm_quant(total.reshape(-1, total.shape[-1]), weight, eps)
        return total, QuantizedRows(q, scale, total.shape)

    return add_and_quantize


def _gated_quant_forward(gated_quant: Callable[..., Any]) -> Callable[..., Any]:
    """The fp8 MLP forward: one matmul for gate and up, then ``gated_quant`` (SiLU gating
    and per-token quantisation in one kernel) feeding down (a closure: dynamo traces it)."""

    def forward(mlp: Any, x: Any) -> Any:
        gate_up = mlp.gate_up_proj(x)  # x: a tensor, or QuantizedRows
        q, scale = gated_quant(gate_up.reshape(-1, gate_up.shape[-1]))
        return mlp.down_proj.quantized_forward(q, scale).view(*x.shape[:-1], -1)

    return forward


def _kernel_gated_forward(op: Callable[..., Any], quant: Callable[..., Any]) -> Callable[..., Any]:
    """The fp8 MLP forward over the fused kernel ``op``, its result quantised for down by
    ``quant`` (a closure: dynamo traces it). ``gate_proj``/``up_proj`` are row blocks of
    the merged weight: their transposes' transposes are (intermediate, hidden) row-major
    fp8 views, no copies."""

    def forward(mlp: Any, x: Any) -> Any:
        if isinstance(x, QuantizedRows):
            q, scale = x.q, x.scale
        else:
            q, scale = quantize_rows(x.reshape(-1, x.shape[-1]))
        gate, up = mlp.gate_proj, mlp.up_proj
        out_dtype = gate.out_dtype  # x may be QuantizedRows: the activations' dtype
        gated = op(q, scale, gate.weight_t.t(), gate.scale, up.weight_t.t(), up.scale, out_dtype)
        q, scale = quant(gated)
        return mlp.down_proj.quantized_forward(q, scale).view(*x.shape[:-1], -1)

    return forward


def _merge_qkv(attn: nn.Module, fast_accum: bool) -> int:
    """An attention module whose q/k/v projections ``packed_attention`` stacked
    (``qkv_proj``): the stack as one fp8 layer, q/k/v as views of it."""
    stacked = getattr(attn, "qkv_proj", None)
    parts = [getattr(attn, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    if not isinstance(stacked, nn.Linear) or not fits(stacked):
        return 0
    widths = [p.out_features for p in parts if isinstance(p, nn.Linear) and fits(p)]
    if len(widths) != 3:
        return 0
    merged = FP8Linear.from_linear(stacked, fast_accum)
    attn.qkv_proj = merged
    if hasattr(attn, "qkv_weight"):  # the 16-bit stack's other name: free it too
        del attn.qkv_weight
    for name, view in zip(("q_proj", "k_proj", "v_proj"), merged.split(widths), strict=True):
        setattr(attn, name, view)
    return 1
