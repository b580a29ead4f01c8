"""Option models (pydantic, ``extra="forbid"``): light, no heavy imports, no model family.

:class:`BackendOptions` holds what every backend understands; the engine option models
add their engine's knobs. A model family's pair format adds its own fields (the Qwen3
reranker's prompt: :class:`reranker.formats.qwen3.Qwen3PromptOptions`), and a backend's
``Options`` combines an engine's and a format's. The config loader validates
``services.rerank.backends.<name>`` against the backend's ``Options`` at startup.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reranker.core.chunking import Chunking

DEFAULT_MODEL = "Qwen/Qwen3-Reranker-0.6B"

# ``quantization``: none (the model's own weights, the default) or fp8 (W8A8: 8-bit
# float e4m3 weights with a scale per output channel, activations quantised per token
# as they come; opt-in, it trades a little fidelity for speed: docs/configuration.md).
Quantization = Literal["none", "fp8"]


def quantization_field(where: str) -> Any:
    """The ``quantization`` option's field, ``where`` saying what runs fp8 and where."""
    return Field(
        "none",
        description="none: the model's weights as loaded; fp8: W8A8, 8-bit float (e4m3) "
        f"weights with a scale per output channel and activations quantised per token, "
        f"{where}; scores move a little (docs/configuration.md)",
    )


def fp8_fast_accum_field() -> Any:
    """The ``fp8_fast_accum`` option's field (the transformers backends' fp8 matmuls)."""
    return Field(
        True,
        description="with quantization fp8 on a GPU: the tensor cores keep their own "
        "reduced-precision running sums through a whole dot product, as vLLM's fp8 "
        "matmuls do (faster); false: added into float32 every 128-deep block",
    )


def fp8_fast_accum_in_force(options: Any) -> bool | None:
    """``options.fp8_fast_accum`` where ``options.quantization`` is fp8, else None (what
    response ``meta`` reports)."""
    return options.fp8_fast_accum if options.quantization == "fp8" else None


class BackendOptions(BaseModel):
    """Options every backend understands, whatever its model family."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model_name: str = Field(DEFAULT_MODEL, min_length=1, description="Hub id or local directory")
    max_model_len: int = Field(4096, ge=64, le=131072, description="Prompt length limit")
    infer_batch_size: int = Field(64, ge=1, description="Most pairs in one forward batch")
    max_batch_tokens: int = Field(
        16384, ge=64, description="Token budget of one batch, padding counted"
    )
    sort_by_doc_length: bool = True
    long_documents: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="truncate: a document is cut to the room its prompt leaves; chunk: a "
        "document longer than chunk_tokens is scored in chunks, aggregated "
        "(reranker.core.chunking); a request may choose either",
    )
    chunk_tokens: int | None = Field(
        None, ge=1, description="tokens of a chunk; default min(512, max_model_len // 2)"
    )
    chunk_overlap: int | None = Field(
        None, ge=0, description="tokens neighbouring chunks share; default chunk_tokens // 8"
    )
    chunk_aggregate: Literal["max", "mean", "first"] = Field(
        "max", description="a chunked document's score: its best chunk's, the mean, the first"
    )
    max_chunks_per_doc: int = Field(
        32, ge=1, le=10000, description="chunks scored per document, from its start"
    )

    @model_validator(mode="after")
    def _chunking_fits(self) -> BackendOptions:
        self.default_chunking()  # InvalidRequest (a ValueError) names the value
        return self

    def default_chunking(self) -> Chunking:
        """The chunking of a request that chooses none (see :mod:`reranker.core.chunking`)."""
        tokens = self.chunk_tokens or min(512, self.max_model_len // 2)
        overlap = self.chunk_overlap if self.chunk_overlap is not None else tokens // 8
        return Chunking(
            self.long_documents, tokens, overlap, self.chunk_aggregate, self.max_chunks_per_doc
        ).check(self.max_model_len)


class TransformersOptions(BackendOptions):
    """Options of ``qwen3_transformers``."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 (or float16) on GPU, float32 on CPU"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    batch_layout: Literal["auto", "packed", "padded"] = Field(
        "auto",
        description="packed: prompts back to back, no padding, varlen attention; "
        "auto: packed where torch's varlen kernel runs (CUDA, bf16/fp16), padded elsewhere",
    )
    fused_rms_norm: bool | Literal["auto"] = Field(
        "auto", description="one fused rms_norm kernel per RMSNorm; auto: on CUDA"
    )
    fused_qk_norm_rope: bool | Literal["auto"] = Field(
        "auto",
        description="packed batches: one Triton kernel per layer normalises and rotates "
        "(RoPE) the query and key heads and lays keys/values out for the attention "
        "kernel; auto: on CUDA where Triton is installed",
    )
    fused_swiglu: bool | Literal["auto"] = Field(
        "auto",
        description="one Triton kernel per layer computes the MLP's gate and up "
        "projections and their SiLU-gated product (Hopper GPUs: TMA); auto: on CUDA where "
        "Triton is installed and the GPU is sm90 or newer; with quantization fp8, auto "
        "fuses the gating with the quantisation of down's input (any fp8 GPU) and true "
        "also the products (its fp8 form, sm90+)",
    )
    torch_compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile each decoder layer at startup (seconds); auto: on CUDA "
        "with packed batches, falling back to eager if compiling fails",
    )
    compile_wrapper: Literal["python", "cpp"] = Field(
        "python",
        description="what launches the compiled layers' kernels: python (inductor's "
        "default) or cpp (a C++ wrapper, built with the system's C++ compiler: less host "
        "time per layer, several times longer first startup)",
    )
    share_query_prefix: bool | Literal["auto"] = Field(
        "auto",
        description="packed batches hold each request's query part (system prompt, "
        "instruction, query) once instead of once per document; auto: with packed batches",
    )
    attention_kernel: Literal["auto", "torch", "flash_attn_3"] = Field(
        "auto",
        description="packed batches on CUDA: torch (its FlashAttention-2) or flash_attn_3 "
        "(Hopper; the build vLLM wheels carry, so vllm must be installed); auto: "
        "flash_attn_3 where it runs, else torch",
    )
    cuda_graphs: bool | Literal["auto"] = Field(
        "auto",
        description="run a call's first batches as CUDA graphs, captured at startup for "
        "packed batches of up to cuda_graph_max_tokens tokens (every 512 up to 8192, then "
        "steps of an eighth): the host "
        "launches a batch at once instead of kernel by kernel; auto: where packed batches "
        "run FlashAttention-3",
    )
    cuda_graph_max_tokens: int = Field(
        32768, ge=2048, description="tokens of the largest batch captured as a CUDA graph"
    )
    quantization: Quantization = quantization_field(
        "the decoder layers' linear layers only (not the embeddings, not the yes/no "
        "lm_head rows), matmuls through torch._scaled_mm; needs a CUDA GPU of compute "
        "capability 8.9 or newer (Ada, Hopper), or the CPU"
    )
    fp8_fast_accum: bool = fp8_fast_accum_field()
    local_files_only: bool = False

    # options that only packed batches have, with what each does there (the error says it)
    _PACKED_ONLY: ClassVar[dict[str, str]] = {
        "cuda_graphs": "replays packed batches",
        "fused_qk_norm_rope": "runs in packed batches' attention",
        "share_query_prefix": "needs packed batches",
    }

    @model_validator(mode="after")
    def _packed_only_options_need_packed_batches(self) -> TransformersOptions:
        if self.batch_layout == "padded":
            for name, why in self._PACKED_ONLY.items():
                if getattr(self, name) is True:
                    raise ValueError(f"{name} {why}; set batch_layout to packed or auto")
        return self

    @model_validator(mode="after")
    def _cpp_wrapper_needs_compiling(self) -> TransformersOptions:
        if self.compile_wrapper == "cpp" and self.torch_compile is False:
            raise ValueError(
                "compile_wrapper 'cpp' launches compiled layers; it needs torch_compile "
                "true or auto (got false)"
            )
        return self

    @model_validator(mode="after")
    def _packed_brings_its_own_attention(self) -> TransformersOptions:
        if self.batch_layout == "packed" and self.attn_implementation != "auto":
            raise ValueError(
                "batch_layout 'packed' runs its own attention; leave attn_implementation "
                f"'auto' (got {self.attn_implementation!r}) or use batch_layout 'padded'"
            )
        return self


class VLLMOptions(BackendOptions):
    """Options of the vLLM backends."""

    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine splits the model over (tensor parallelism)"
    )
    data_parallel_size: int = Field(
        1,
        ge=1,
        description="engines, each with the whole model on tensor_parallel_size GPUs of "
        "its own, that share every call's prompts (data parallelism); needs "
        "data_parallel_size x tensor_parallel_size CUDA GPUs on this host",
    )
    gpu_memory_utilization: float = Field(0.4, gt=0.0, le=1.0)
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    dtype: Literal["auto", "float16", "half", "bfloat16", "float32", "float"] = "auto"
    vllm_runner: Literal["auto", "generate", "pooling", "draft"] = "auto"
    vllm_convert: Literal["auto", "none", "embed", "classify"] = "auto"
    use_original_qwen3_hf_overrides: bool = True
    hf_overrides: dict[str, Any] = Field(default_factory=dict)
    vllm_attention_backend: str = Field("auto", description="auto or a vLLM backend name")
    auto_triton_attn_on_sm_lt_8: bool = True
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=64)
    quantization: Quantization = quantization_field(
        "as vLLM quantises a checkpoint at load (its quantization='fp8'); needs a GPU "
        "vLLM runs fp8 on"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _fp8_computes_in_16_bits(self) -> VLLMOptions:
        if self.quantization == "fp8" and self.dtype in ("float32", "float"):
            raise ValueError(
                "quantization 'fp8' runs vLLM's fp8 kernels, which compute in bfloat16 or "
                f"float16: set dtype to auto, bfloat16 or float16 (got {self.dtype!r})"
            )
        return self
