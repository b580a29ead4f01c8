"""``qwen3_transformers``: Qwen3-Reranker on Hugging Face transformers.

Only the last position's hidden state is projected, and only onto the two lm_head rows
that matter (no, yes): the 151,669-wide logits are never computed. Batches are either
padded (left padding, one row per prompt) or packed (all prompts in one row, no padding,
variable-length attention: see ``packed_attention``).
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, ClassVar

from reranker.backends.hf_loading import HFTextTokenizer, check_hub_model, load_or_explain
from reranker.backends.runtime import resolve_device, resolve_dtype
from reranker.backends.transformers import packed_attention, speedups
from reranker.backends.transformers.compile_watch import WATCH
from reranker.backends.transformers.cuda_graphs import BatchGraphs, StaticShape, static_shapes
from reranker.backends.transformers.host_copy import start_copy_to_host
from reranker.backends.transformers.jobs import DocChunks, FlatPrompts, WaveLimits, read_ahead
from reranker.backends.transformers.kernels import qk_norm_rope, swiglu, triton_support
from reranker.backends.transformers.packing import (
    PackedBatch,
    PromptParts,
    device_columns,
    host_buffer,
    pack,
)
from reranker.backends.transformers.sizing import (
    BatchSizes,
    ModelDims,
    fit_batch_sizes,
    room_tokens,
)
from reranker.backends.transformers.warm_up import warm_up_batches
from reranker.core.batching import plan_batches
from reranker.core.errors import ConfigError, InvalidRequest
from reranker.core.model_source import check_model_source
from reranker.core.options import fp8_fast_accum_in_force
from reranker.core.protocol import PairScores, RerankBackend, ScoreJob
from reranker.formats.qwen3 import Qwen3PromptFormat, Qwen3TransformersOptions
from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID, Qwen3PromptEncoder

logger = logging.getLogger(__name__)

# Packed batches on a GPU waste nothing on padding, so bigger ones only make the matmuls
# bigger: the defaults there, where the options leave the batch size unset. They are
# Qwen3-Reranker-0.6B's; a larger model gets smaller ones where its activations would not
# fit the GPU's free memory (``sizing``, :meth:`Qwen3TransformersBackend._fit_batches`).
GPU_PACKED_DEFAULTS = {"max_batch_tokens": 65536, "infer_batch_size": 256}
# The options whose defaults follow the model's size on a GPU.
SIZED_OPTIONS = ("max_batch_tokens", "infer_batch_size", "cuda_graph_max_tokens")
# On a GPU, a call's first request sends this many documents to the device on their own
# while the rest is tokenised (DocChunks, read_ahead); on CPU the forward pass itself is
# the host's work, so there is nothing to overlap. 32 documents keep the GPU busy for
# about as long as the host takes to launch their batch (16 left it idle: measured).
GPU_HEAD_DOCS = 32
# On a GPU (packed batches), a request of more than GPU_CHUNKED_ABOVE documents is
# tokenised GPU_CHUNK_DOCS at a time, several chunks at once on the tokenising thread
# pool, and its batches are filled with such chunks as they come: the next batch is ready
# while the device runs this one, where such a request tokenised whole left the device
# waiting for it (1,000 documents, 0.6B shape: 71 ms idle, +6% pairs/s in chunks).
# Smaller requests are tokenised whole, side by side (chunking 4 x 100 documents cost
# 5.5% in one call: the tokenising threads then compete with the launching one).
GPU_CHUNK_DOCS = 16
GPU_CHUNKED_ABOVE = 256


def _expand_runs(torch: Any, starts: Any, lengths: Any, total: int) -> Any:
    """``arange(start, start + length)`` for each run, back to back, as one tensor on the
    runs' device (``packing.expand_runs`` on tensors), without a host sync."""
    offsets = torch.cumsum(lengths, 0) - lengths
    shift = torch.repeat_interleave(starts - offsets, lengths, output_size=total)
    return torch.arange(total, device=starts.device) + shift


class Qwen3TransformersBackend(Qwen3PromptFormat, RerankBackend):
    """Qwen3-Reranker with ``AutoModelForCausalLM``; thread-safe, batches under a token budget."""

    name: ClassVar[str] = "qwen3_transformers"
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    Options = Qwen3TransformersOptions
    env_prefix: ClassVar[str] = "RERANK_HF_"
    options: Qwen3TransformersOptions

    check_model = staticmethod(check_hub_model)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load in every service log: noise

        opts = self.options
        self._set_in_options = frozenset(opts.model_fields_set)  # before defaults are filled in
        self._torch = torch
        self.device = torch.device(resolve_device(opts.device))
        self.dtype = getattr(torch, resolve_dtype(opts.dtype, self.device.type))
        on_cuda = self.device.type == "cuda"
        self._choose_batching(opts, on_cuda)
        cache_only = (
            check_model_source(opts.model_name, local_files_only=opts.local_files_only) == "cache"
        )
        tokenizer = load_or_explain(
            opts.model_name,
            "tokenizer",
            lambda: AutoTokenizer.from_pretrained(
                opts.model_name, padding_side="left", local_files_only=cache_only
            ),
        )
        kwargs: dict[str, Any] = {"dtype": self.dtype, "local_files_only": cache_only}
        if self.packed:
            kwargs["attn_implementation"] = packed_attention.register(self.attention_kernel)
        elif opts.attn_implementation != "auto":
            kwargs["attn_implementation"] = opts.attn_implementation
        model = load_or_explain(
            opts.model_name,
            "model",
            lambda: AutoModelForCausalLM.from_pretrained(opts.model_name, **kwargs),
        )
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        self._body = self._model.get_decoder()
        head = self._model.get_output_embeddings().weight
        # rows [no, yes]: logit(yes) - logit(no) = h . (w_yes - w_no)
        self._yes_minus_no = (head[YES_TOKEN_ID] - head[NO_TOKEN_ID]).detach().float()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._text_tokenizer = HFTextTokenizer(tokenizer)
        self._encoder = Qwen3PromptEncoder(self.template, self._text_tokenizer, opts.max_model_len)
        self._lock = threading.Lock()
        if self.packed:  # packed batches read each prompt's last row only
            speedups.last_layer_at_rows(self._body)
        self.fused_rms_norm = on_cuda if opts.fused_rms_norm == "auto" else opts.fused_rms_norm
        if self.fused_rms_norm:
            speedups.fuse_rms_norms(self._model)
        self.fused_qk_norm_rope = self._fuse_qk_norm_rope()
        self.fp8_matmuls = self._quantize()
        self.fused_swiglu = self._fuse_swiglu()
        self.fp8_fused_norms = self._fuse_norm_quant()
        self._fit_batches()  # before the warm-up batch and the graphs take their sizes
        self.compiled = False
        self._graphs: BatchGraphs | None = None
        self.graph_misses = 0  # first-wave batches that no captured CUDA graph fits
        # compilations while starting are expected; any later one is logged and counted
        with WATCH.starting():
            started = time.perf_counter()
            if self._compile_wanted:
                self._compile(required=opts.torch_compile is True)
            if self._graphs_wanted:
                self._capture_graphs(required=opts.cuda_graphs is True)
            built_s = time.perf_counter() - started
            self._warm_up(built_s)
        logger.info(
            "qwen3_transformers ready: model=%s device=%s dtype=%s batches=%s "
            "fused_rms_norm=%s fused_qk_norm_rope=%s fused_swiglu=%s compiled=%s cuda_graphs=%s "
            "quantization=%s",
            opts.model_name,
            self.device,
            self.dtype,
            self.batch_layout,
            self.fused_rms_norm,
            self.fused_qk_norm_rope,
            self.fused_swiglu,
            self.compiled,
            self._graphs is not None,
            opts.quantization,
        )

    def _quantize(self) -> int:
        """``quantization: fp8``: the decoder layers' linear layers as fp8 ones
        (:mod:`fp8`; the embeddings and the yes/no head rows keep the model's dtype).
        Returns how many fp8 matmuls a layer stack runs (0 without fp8). A device fp8
        cannot run on is a :class:`ConfigError`."""
        if self.options.quantization != "fp8":
            return 0
        from reranker.backends.transformers import fp8

        fp8.check_device(self.device, self.options.fp8_fast_accum)
        count = fp8.quantize_layers(self._body.layers, self.options.fp8_fast_accum)
        if not count:
            raise ConfigError(
                f"quantization: fp8, but no linear layer of {self.options.model_name} has "
                "widths the fp8 matmul takes (multiples of 16); set quantization: none"
            )
        logger.info("quantization fp8: %d fp8 matmuls in the decoder layers", count)
        return count

    def _fuse_swiglu(self) -> bool:
        """``fused_swiglu``: the MLPs' gate and up products and SiLU gating as one Triton
        kernel. Where the layers are quantised (after :meth:`_quantize`): under ``auto``
        the gating and the quantisation of down's input as one kernel after the fp8
        matmul of gate/up; under ``true`` also the products in a kernel (its fp8 form)."""
        unlike_qwen3 = "MLP is not a bias-free SiLU-gated one with rows TMA can read"
        if not self.fp8_matmuls:
            return self._use_triton_kernel(
                "fused_swiglu",
                swiglu.self_check,
                lambda: swiglu.fuse_mlps(self._model),
                unlike_qwen3,
            )
        from reranker.backends.transformers import fp8
        from reranker.backends.transformers.kernels import fp8_quant, fp8_swiglu

        layers = self._body.layers
        if self.options.fused_swiglu is not True:

            def fuse_gating() -> int:
                op = fp8_quant.gated_quant_op()
                return fp8.fuse_gated_mlps(layers, gated_quant=op) if op else 0

            return self._use_triton_kernel(
                "fused_swiglu",
                fp8_quant.self_check,
                fuse_gating,
                "MLP is not a bias-free SiLU-gated one with merged fp8 gate/up weights",
            )

        # measured on an H200 (4B shape, down's input then quantised by inductor): the
        # products in a kernel were no faster than the fp8 matmul of the merged gate/up
        # weight (docs/performance.md), so opt-in
        def check(device: Any, dtype: Any) -> str | None:
            why = fp8_swiglu.self_check(device, dtype)
            if why:
                return f"fp8 SwiGLU kernel: {why}"
            why = fp8_quant.self_check(device, dtype)
            return f"fp8 quantisation kernel: {why}" if why else None

        def fuse_products() -> int:
            op, quant = fp8_swiglu.fused_op(), fp8_quant.quantize_op()
            return fp8.fuse_gated_mlps(layers, swiglu=op, quant=quant) if op and quant else 0

        return self._use_triton_kernel("fused_swiglu", check, fuse_products, unlike_qwen3)

    def _fuse_norm_quant(self) -> int:
        """Under fp8 with ``fused_rms_norm``, where the layers will be compiled: each
        RMSNorm in front of an fp8 matmul adds the residual, normalises and quantises in one
        Triton kernel (``fp8.fuse_norm_quant``; compiled layers carry their residual adds,
        and call it; the last layer's norms run as modules). Returns how many norms took
        it; where the kernel cannot run here, 0, with a warning."""
        if not (self.fp8_matmuls and self.fused_rms_norm and self._compile_wanted):
            return 0
        from reranker.backends.transformers import fp8
        from reranker.backends.transformers.kernels import fp8_quant

        if self.device.type != "cuda" and not triton_support.interpreted():
            return 0
        hidden = int(self._model.config.hidden_size)
        why_not = fp8_quant.norm_self_check(self.device, self.dtype, hidden)
        norm_op, add_op = fp8_quant.norm_quant_op(), fp8_quant.add_norm_quant_op()
        if why_not or norm_op is None or add_op is None:
            logger.warning("fp8: norms quantise apart from their kernel: %s", why_not)
            return 0
        quantize = (
            fp8_quant.quantize_op()
            if fp8_quant.self_check(self.device, self.dtype) is None
            else None
        )
        return fp8.fuse_norm_quant(self._body.layers[:-1], norm_op, add_op, quantize)

    def _choose_batching(self, opts: Qwen3TransformersOptions, on_cuda: bool) -> None:
        """Resolve how batches are built and run: the ``auto`` layout, prefix sharing, the
        GPU batch defaults, the attention kernel, whether the layers are compiled, and
        whether a call's first documents go ahead on their own (GPU only). Runs before
        the model loads, so that a contradictory setting fails fast."""
        self.packed = opts.batch_layout == "packed" or (
            opts.batch_layout == "auto"
            and opts.attn_implementation == "auto"
            and (
                opts.share_query_prefix is True
                or packed_attention.varlen_kernel_available(self.device, self.dtype)
            )
        )
        if opts.share_query_prefix is True and not self.packed:
            raise ConfigError("share_query_prefix needs packed batches (batch_layout: packed)")
        self.share_query_prefix = self.packed and opts.share_query_prefix is not False
        if self.packed and on_cuda:
            for key, value in GPU_PACKED_DEFAULTS.items():
                if key not in opts.model_fields_set:
                    setattr(opts, key, value)
        self.attention_kernel = self._pick_attention_kernel(opts.attention_kernel, on_cuda)
        self._compile_wanted = opts.torch_compile is True or (
            opts.torch_compile == "auto" and on_cuda and self.packed
        )
        if opts.compile_wrapper == "cpp" and not self._compile_wanted:
            raise ConfigError(
                "compile_wrapper: cpp applies to compiled layers, and torch_compile: auto "
                "compiles only on CUDA with packed batches; set torch_compile: true or "
                "compile_wrapper: python"
            )
        self._graphs_wanted = opts.cuda_graphs is True or (
            opts.cuda_graphs == "auto" and self.attention_kernel == "flash_attn_3"
        )
        if opts.cuda_graphs is True and self.attention_kernel != "flash_attn_3":
            # FlashAttention-3's persistent scheduler skips a captured shape's unused
            # sequence slots; other kernels would launch blocks for all of them.
            raise ConfigError(
                "cuda_graphs: true needs packed batches on FlashAttention-3 (a Hopper GPU, "
                "vllm installed, bfloat16/float16); set cuda_graphs to auto or false"
            )
        self.head_docs = GPU_HEAD_DOCS if on_cuda else 0
        # (packed batches only: padded ones need a call's documents sorted by length)
        self.chunk_docs = GPU_CHUNK_DOCS if on_cuda and self.packed else 0
        self.chunked_above = GPU_CHUNKED_ABOVE
        # On a GPU the next wave is tokenised in a thread while this one is packed and
        # launched; on CPU the forward pass needs every core.
        self.tokenise_ahead = on_cuda
        # On a GPU a call returns once its batches are queued (``_start_jobs``): the service
        # prepares its next call while the device runs this one.
        self.overlaps_calls = on_cuda
        # with CUDA graphs, the first wave goes out before that thread starts (per query
        # +2% on an H200, docs/performance.md); an attribute so the profile script can vary it
        self.head_first = True

    def _fit_batches(self) -> None:
        """On a GPU, lower the batch sizes the options leave unset (``SIZED_OPTIONS``) to
        what fits the memory free with the model loaded, for this model's size
        (:func:`sizing.fit_batch_sizes`): Qwen3-Reranker-0.6B keeps the defaults on any
        card of 8 GB or more, the 8B gets smaller batches on a card its weights nearly
        fill. Sets ``batch_sizing``: ``options`` (all set there), ``default`` (CPU, or
        the defaults fit) or ``memory`` (lowered); logged, and in meta."""
        opts = self.options
        auto = [k for k in SIZED_OPTIONS if k not in self._set_in_options]
        self.batch_sizing = "default" if auto else "options"
        if not auto or self.device.type != "cuda":
            return
        torch = self._torch
        config = self._model.config
        try:
            dims = ModelDims.of(config.get_text_config())
        except (AttributeError, TypeError) as exc:
            logger.warning("batch sizes not fitted to the model (its config lacks %s)", exc)
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        # memory torch holds but does not use (loading's leftovers) is free to this process
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        defaults = BatchSizes(*(getattr(opts, k) for k in SIZED_OPTIONS))
        graphs = self._graphs_wanted
        fitted = fit_batch_sizes(
            dims, free, self.dtype.itemsize, defaults, graphs, fixed=self._set_in_options
        )
        for key in auto:
            if getattr(fitted, key) != getattr(opts, key):
                setattr(opts, key, getattr(fitted, key))
                self.batch_sizing = "memory"
        per_token = dims.activation_bytes_per_token(self.dtype.itemsize)
        logger.info(
            "batch sizes (%s): max_batch_tokens=%d infer_batch_size=%d "
            "cuda_graph_max_tokens=%d; %.1f GiB free on %s with the model loaded, "
            "~%d KiB of activations a token (hidden %d, intermediate %d, %d layers)",
            self.batch_sizing,
            opts.max_batch_tokens,
            opts.infer_batch_size,
            opts.cuda_graph_max_tokens,
            free / 2**30,
            self.device,
            per_token // 1024,
            dims.hidden_size,
            dims.intermediate_size,
            dims.num_hidden_layers,
        )
        graph_tokens = min(opts.cuda_graph_max_tokens, opts.max_batch_tokens) if graphs else 0
        if opts.max_batch_tokens + graph_tokens > room_tokens(dims, free, self.dtype.itemsize):
            logger.warning(
                "the GPU has little memory left for batches (%.1f GiB free with the model "
                "loaded): batches of %d tokens may run out of memory; free the GPU or "
                "set max_batch_tokens lower",
                free / 2**30,
                opts.max_batch_tokens,
            )

    def _pick_attention_kernel(self, wanted: str, on_cuda: bool) -> str:
        """Which varlen kernel packed batches run: FlashAttention-3 where asked for or,
        under ``auto``, where it runs (packed, CUDA, 16-bit); torch's kernel otherwise."""
        fa3_applies = self.packed and on_cuda and self.dtype.itemsize == 2
        why_not = packed_attention.flash_attn_3_unavailable() if fa3_applies else None
        if wanted == "flash_attn_3":
            if not fa3_applies:
                raise ConfigError(
                    "attention_kernel flash_attn_3 needs packed batches on a CUDA device "
                    "in float16/bfloat16"
                )
            if why_not:
                raise ConfigError(f"attention_kernel flash_attn_3: {why_not}")
            return "flash_attn_3"
        if wanted == "auto" and fa3_applies and why_not is None:
            return "flash_attn_3"
        return "torch"

    def _fuse_qk_norm_rope(self) -> bool:
        """Give packed attention the fused q/k-norm + RoPE + key/value kernel where the
        option asks for it and it runs."""
        if self.options.fused_qk_norm_rope is True and not self.packed:
            raise ConfigError("fused_qk_norm_rope needs packed batches (batch_layout: packed)")
        return self.packed and self._use_triton_kernel(
            "fused_qk_norm_rope",
            qk_norm_rope.self_check,
            lambda: packed_attention.fuse_qk_norm_rope(self._model, self.attention_kernel),
            "attention is not Qwen3's (per-head q/k norms, no biases)",
        )

    def _use_triton_kernel(
        self,
        option: str,
        self_check: Callable[[Any, Any], str | None],
        fuse: Callable[[], int],
        unlike_qwen3: str,
    ) -> bool:
        """Whether the Triton kernel behind ``option`` (auto / true / false) serves the
        model: it runs on CUDA, or in Triton's interpreter (tests, which ask for it: under
        auto, CUDA only), and passes ``self_check`` (device, dtype) -> why not; ``fuse()``
        then puts it in the model and says how many modules took it. ``true`` where it
        cannot serve is a startup error; ``auto`` falls back with a warning."""
        wanted = getattr(self.options, option)
        on_cuda = self.device.type == "cuda"
        if wanted is False or (wanted == "auto" and not on_cuda):
            return False
        if on_cuda or triton_support.interpreted():
            why_not = self_check(self.device, self.dtype)
        else:
            why_not = "it runs on CUDA devices (or in Triton's interpreter, TRITON_INTERPRET=1)"
        if why_not is None and not fuse():
            why_not = f"this model's {unlike_qwen3}"
        if why_not and wanted is True:
            raise ConfigError(f"{option}: true, but {why_not}; set it to auto or false")
        if why_not:
            logger.warning("%s off, the unfused code runs: %s", option, why_not)
        return why_not is None

    def _compile(self, required: bool) -> None:
        """Compile the decoder layers and build the graph now, not on the first request."""
        warm_up = self._warm_up_batch()
        cpp_wrapper = self.options.compile_wrapper == "cpp"
        # each layer's last residual add then fuses into the next layer's input norm
        speedups.carry_residuals(self._body)
        try:
            speedups.compile_layers(self._body.layers, lambda: self._forward(warm_up), cpp_wrapper)
        except Exception as exc:
            if cpp_wrapper:
                raise ConfigError(
                    f"compile_wrapper: cpp, but compiling the decoder with inductor's C++ "
                    f"wrapper failed here ({exc}); it needs a C++ compiler and Python "
                    "headers, or set compile_wrapper: python"
                ) from exc
            if required:
                raise ConfigError(
                    f"torch_compile: true, but compiling the decoder failed here ({exc}); "
                    "set torch_compile to auto (falls back to eager) or false"
                ) from exc
            logger.warning("torch.compile failed, running eagerly: %s", exc)
            return
        self.compiled = True

    def _capture_graphs(self, required: bool) -> None:
        """Capture the packed forward pass as CUDA graphs, one per static batch shape."""
        opts = self.options
        max_tokens = min(opts.cuda_graph_max_tokens, opts.max_batch_tokens)
        shapes = static_shapes(max_tokens, opts.infer_batch_size, self.share_query_prefix)
        if not shapes:
            why = f"batches of at most {max_tokens} tokens are smaller than the least shape"
            if required:
                raise ConfigError(f"cuda_graphs: true, but {why}; raise max_batch_tokens")
            logger.info("no CUDA graphs: %s", why)
            return

        def forward(columns: list[Any], shape: StaticShape) -> Any:
            bounds = (shape.tokens, shape.keys)
            return self._run_packed(columns, *bounds, *bounds)

        graphs = BatchGraphs(self._torch, self.device, shapes, forward)
        token = self._pad_id + 1
        example = pack([PromptParts(0, [token] * 8, [token + 1] * 8)], self.share_query_prefix)
        try:
            graphs.capture(example, self._pad_id)
        except Exception as exc:
            if required:
                raise ConfigError(
                    f"cuda_graphs: true, but capturing them failed here ({exc}); set "
                    "cuda_graphs to auto (falls back to launching batches) or false"
                ) from exc
            logger.warning("CUDA graph capture failed, launching batches: %s", exc)
            return
        self._graphs = graphs

    def _warm_up_batch(self) -> list[PromptParts]:
        """The batch that builds the compiled graph. inductor tunes each kernel's launch
        for the sizes it sees first, so on a GPU this is as big as the batches requests
        make (half the token budget: waves fill that much); elsewhere, three short prompts.
        """
        token = self._pad_id + 1
        if self.device.type != "cuda":
            return [
                PromptParts(0, [token] * 7, [token + 1] * 10),
                PromptParts(0, [token] * 7, [token + 2] * 26),
                PromptParts(1, [token + 3] * 9, [token + 1] * 20),
            ]
        opts = self.options
        prompt_tokens = min(512, opts.max_model_len)
        count = max(3, min(opts.infer_batch_size, opts.max_batch_tokens // 2 // prompt_tokens))
        prefix = prompt_tokens // 8
        return [
            PromptParts(
                k % 4, [token + k % 4] * prefix, [token + 5] * (prompt_tokens - prefix - k % 8)
            )
            for k in range(count)
        ]

    def _warm_up(self, built_s: float) -> None:
        """Run every batch form requests make (:func:`warm_up.warm_up_batches`: the
        largest the token budget allows, one prompt, two, several queries; through the
        CUDA graphs too where they fit) and one scoring call of two queries through the
        whole path (tokenizer, waves, read-ahead), so that no request is the first to
        build anything. Logs how long compiling, capturing and warming up took."""
        torch = self._torch
        opts = self.options
        started = time.perf_counter()
        on_gpu = self.device.type == "cuda"
        batches = warm_up_batches(
            self._pad_id,
            opts.max_batch_tokens,
            opts.infer_batch_size,
            opts.max_model_len,
            on_gpu,
            packed=self.batch_layout == "packed",
        )
        outputs = []
        for batch in batches:
            try:
                outputs.append(self._forward(batch.prompts))
                graphs = self._graphs
                if graphs is not None and batch.tokens <= graphs.max_tokens:
                    outputs.append(self._forward(batch.prompts, graphed=True))
            except torch.cuda.OutOfMemoryError:
                outputs.clear()
                torch.cuda.empty_cache()
                logger.warning(
                    "warm-up: the %s batch (%d prompts, %d tokens) ran out of GPU memory; "
                    "requests that large will too: set max_batch_tokens lower",
                    batch.name,
                    len(batch.prompts),
                    batch.tokens,
                )
        if outputs:
            torch.cat(outputs).tolist()  # waits for the device
        self._score_jobs(self._warm_up_jobs())
        self.graph_misses = 0  # the warm-up's own batches do not count
        logger.info(
            "warm-up done in %.1f s (compiling and CUDA graphs before it: %.1f s): batches "
            "%s and one call of two queries",
            time.perf_counter() - started,
            built_s,
            ", ".join(f"{b.name} ({len(b.prompts)} prompts, {b.tokens} tokens)" for b in batches),
        )

    def _warm_up_jobs(self) -> list[ScoreJob]:
        """Two queries' jobs for the warm-up call; the first has enough documents to be
        split (``head_docs``), as a large request's are."""
        docs = [f"warm-up document {k}: {'text ' * (k % 5)}" for k in range(2 * self.head_docs + 3)]
        instruction = self.default_instruction()
        return [
            ScoreJob("warm-up query", docs, instruction),
            ScoreJob("another warm-up query", docs[:2], instruction),
        ]

    def runtime_counters(self) -> dict[str, int]:
        """What the service counts in /metrics: ``recompiles`` (torch.compile
        compilations after startup, process-wide) and ``graph_misses`` (batches meant for
        a CUDA graph that none of the captured shapes fits: they run without one)."""
        return {"recompiles": WATCH.recompiles, "graph_misses": self.graph_misses}

    @property
    def batch_layout(self) -> str:
        """``packed`` or ``padded``: how prompts share a forward pass."""
        return "packed" if self.packed else "padded"

    def meta_extra(self) -> dict[str, Any]:
        """Device, dtype and batch layout in force."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "batch_layout": self.batch_layout,
            "share_query_prefix": self.share_query_prefix,
            "attention_kernel": self.attention_kernel if self.packed else None,
            "fused_rms_norm": self.fused_rms_norm,
            "fused_qk_norm_rope": self.fused_qk_norm_rope,
            "fused_swiglu": self.fused_swiglu,
            "swiglu_kernel": self.swiglu_kernel,
            "compiled": self.compiled,
            "compile_wrapper": self.options.compile_wrapper if self.compiled else None,
            "cuda_graphs": self._graphs is not None,
            "cuda_graph_max_tokens": self._graphs.max_tokens if self._graphs else None,
            "batch_sizing": self.batch_sizing,
            "quantization": self.options.quantization,
            "fp8_fast_accum": fp8_fast_accum_in_force(self.options),
            "fp8_fused_norms": self.fp8_fused_norms > 0 if self.fp8_matmuls else None,
        }

    @property
    def swiglu_kernel(self) -> str | None:
        """Which Triton kernel runs the MLPs' gating (``fused_swiglu``): ``swiglu`` (gate
        and up products and the gating), ``fp8_gating`` (under fp8: the gating and the
        quantisation of down's input, after the fp8 gate/up matmul), ``fp8_swiglu``
        (under fp8: the products from fp8 operands and the gating), or None."""
        if not self.fused_swiglu:
            return None
        if not self.fp8_matmuls:
            return "swiglu"
        return "fp8_swiglu" if self.options.fused_swiglu is True else "fp8_gating"

    def _score_jobs(self, jobs: list[ScoreJob]) -> list[PairScores | InvalidRequest]:
        """All jobs scored in shared batches (:meth:`_start_jobs`, waiting for the results)."""
        return self._start_jobs(jobs)()

    def _start_jobs(self, jobs: list[ScoreJob]) -> Callable[[], list[PairScores | InvalidRequest]]:
        """Tokenise, pack and queue every batch of ``jobs`` on the device; the function
        returned waits for the logits (one host sync a call) and returns the results.
        On a GPU this returns while the device runs the batches (``overlaps_calls``)."""
        opts = self.options
        waves: list[tuple[FlatPrompts, list[list[int]]]] = []
        outputs = []
        chunks = DocChunks.of(jobs, self.chunk_docs, self.head_docs, self.chunked_above)
        with self._lock:
            graphs = self._graphs
            # Each wave (about one batch) is queued on the device as soon as it is
            # encoded; the next is tokenised while the device runs it, on a GPU by a worker
            # thread (read_ahead) so that packing and launching overlap it too (the first
            # request's first documents make a wave of their own: the device starts early).
            # The first wave, which the device would otherwise wait for the host to
            # launch, is cut to the size of the CUDA graphs and replayed.
            # Results stay on the device until everything is queued: one host sync a call.
            limits = WaveLimits(
                opts.max_batch_tokens,
                opts.infer_batch_size,
                min(opts.max_batch_tokens, graphs.max_tokens if graphs else opts.max_batch_tokens),
            )
            encoded = FlatPrompts.in_waves(
                self._encoder,
                chunks.jobs,
                limits,
                first_alone=chunks.head,
                ahead=self.tokenise_ahead,
                keys=chunks.owners,
            )
            for wave, flat in enumerate(self._tokenised_ahead(encoded)):
                graphed = graphs is not None and wave == 0
                batches = plan_batches(
                    flat.lengths,
                    limits.first_tokens if wave == 0 else limits.tokens,
                    opts.infer_batch_size,
                    opts.sort_by_doc_length,
                    padded=not self.packed,
                )
                waves.append((flat, batches))
                outputs += [
                    self._forward([flat.prompt_parts(k) for k in b], graphed=graphed)
                    for b in batches
                ]
            logits_on_host = start_copy_to_host(self._torch, outputs, self.device)

        def collect() -> list[PairScores | InvalidRequest]:
            values = iter(logits_on_host())
            if self.compiled:
                WATCH.report()  # a compilation this call paid for: a WARNING with its reason
            results: list[PairScores | InvalidRequest] = []
            batches_of = [0] * chunks.count  # each request's batches, over its waves
            for flat, batches in waves:
                logits = [0.0] * len(flat.lengths)
                for k in chain.from_iterable(batches):
                    logits[k] = next(values)
                results += flat.results(logits, len(batches))
                for owner in set(flat.keys):
                    batches_of[owner] += len(batches)
            return chunks.join(results, batches_of)

        return collect

    def _tokenised_ahead(self, waves: Iterator[FlatPrompts]) -> Iterator[FlatPrompts]:
        """``waves``, the later ones tokenised by a worker thread where that pays (GPU).
        With CUDA graphs the first wave is launched before the worker starts: replaying it
        takes the host a moment, unless the worker's Python holds the GIL meanwhile."""
        if not self.tokenise_ahead:
            return waves
        if self._graphs is None or not self.head_first:
            return read_ahead(waves)
        first = next(waves, None)
        return chain([] if first is None else [first], read_ahead(waves))

    def _forward(self, prompts: list[PromptParts], graphed: bool = False) -> Any:
        """logit(yes) - logit(no) of each prompt of one batch, as a float32 device tensor;
        ``graphed``: through a CUDA graph where one is captured for the batch's size."""
        if not self.packed:
            return self._forward_padded(prompts)
        batch = pack(prompts, self.share_query_prefix)
        if graphed and self._graphs is not None:
            logits = self._graphs.run(batch, self._pad_id)
            if logits is not None:
                return logits
            self._graph_missed(batch)
        return self._forward_packed(batch)

    def _graph_missed(self, batch: PackedBatch) -> None:
        """Count (and log: the first at INFO, later ones at DEBUG) a batch that no
        captured CUDA graph fits; it runs through the compiled layers without one, which
        capture nothing at request time."""
        self.graph_misses += 1
        log = logger.info if self.graph_misses == 1 else logger.debug
        log(
            "no CUDA graph fits a batch of %d tokens, %d prompts, %d sequences, %d key rows: "
            "launched without one (%d so far)",
            len(batch.ids),
            len(batch.last_rows),
            len(batch.query_lengths),
            sum(batch.key_lengths),
            self.graph_misses,
        )

    def _forward_padded(self, prompts: list[PromptParts]) -> Any:
        torch = self._torch
        width = max(len(p.prefix) + len(p.rest) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, parts in enumerate(prompts):
            prompt = [*parts.prefix, *parts.rest]
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        # Left padding: positions count real tokens only, as if each prompt were alone.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self._body(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=False,
            )
            return self._yes_minus_no_logits(out.last_hidden_state[:, -1, :])

    def _forward_packed(self, batch: PackedBatch) -> Any:
        ids, columns = device_columns(batch)
        key_rows = sum(batch.key_lengths)
        bounds = (len(ids), key_rows, max(batch.query_lengths), max(batch.key_lengths))
        return self._run_packed(self._to_device(ids, columns), *bounds)

    def _run_packed(
        self, columns: list[Any], tokens: int, key_rows: int, max_q: int, max_k: int
    ) -> Any:
        """The packed forward pass over a batch's device columns (``device_columns``
        order) of ``tokens`` rows reading ``key_rows`` gathered key rows, no sequence longer
        than ``max_q`` queries / ``max_k`` keys. It only launches work (no host sync), so
        a CUDA graph can capture it."""
        torch = self._torch
        ids, starts, lengths, cu_query, cu_rows, last_rows, *keys = columns
        shared: dict[str, Any] = {}
        if keys:
            run_starts, run_lengths, cu_key = keys
            shared = {
                "key_index": _expand_runs(torch, run_starts, run_lengths, key_rows),
                "cu_seq_lens_k": cu_key.to(torch.int32),
                "max_length_k": max_k,
            }
        with torch.inference_mode():
            out = self._body(
                input_ids=ids[None],
                position_ids=_expand_runs(torch, starts, lengths, tokens)[None],
                use_cache=False,
                cu_seq_lens_q=cu_query.to(torch.int32),
                max_length_q=max_q,
                last_rows=last_rows,  # the last layer's output: queries at these rows only
                row_bounds=cu_rows.to(torch.int32),
                **shared,
            )
            return self._yes_minus_no_logits(out.last_hidden_state[0])

    def _to_device(self, ids: array[int], columns: list[list[int]]) -> list[Any]:
        """A batch's token ids and index lists as int64 device tensors, in one
        host-to-device copy. On CUDA the copy is from pinned memory, so the host does not
        wait for it: a copy from pageable memory waits until the GPU has finished the
        work queued before it, and the host could not prepare the next batch meanwhile.
        """
        torch = self._torch
        host = torch.frombuffer(host_buffer(ids, columns), dtype=torch.int64)
        if self.device.type == "cuda":
            host = host.pin_memory()
        flat = host.to(self.device, non_blocking=True)
        return list(flat.split([len(ids), *map(len, columns)]))

    def _yes_minus_no_logits(self, last_hidden: Any) -> Any:
        """logit(yes) - logit(no) for each row of last-position hidden states."""
        last = last_hidden.float()
        return last @ self._yes_minus_no.to(last.device)

    def close(self) -> None:
        """Drop the model and free GPU memory."""
        self._graphs = None
        self._model = None
        self._body = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()
