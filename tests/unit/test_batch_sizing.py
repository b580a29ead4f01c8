"""Batch sizes of qwen3_transformers on a GPU follow the model's size and the memory free
with it loaded: the 0.6B model keeps its defaults, the 8B gets smaller batches where its
activations would not fit; options the user set are kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reranker.backends.transformers.sizing import (
    ACTIVATION_SHARE,
    GIB,
    TOKEN_STEP,
    BatchSizes,
    ModelDims,
    fit_batch_sizes,
    room_tokens,
)

DIMS = {  # hidden, intermediate, heads, KV heads, head_dim, layers
    "0.6b": ModelDims(1024, 3072, 16, 8, 128, 28),
    "4b": ModelDims(2560, 9728, 32, 8, 128, 36),
    "8b": ModelDims(4096, 12288, 32, 8, 128, 36),
}
PACKED = BatchSizes(max_batch_tokens=65536, infer_batch_size=256, cuda_graph_max_tokens=32768)
PADDED = BatchSizes(max_batch_tokens=16384, infer_batch_size=64, cuda_graph_max_tokens=32768)


def fit(shape, free_gib, defaults=PACKED, graphs=True):
    return fit_batch_sizes(DIMS[shape], int(free_gib * GIB), 2, defaults, graphs)


def test_activation_bytes_per_token_grow_with_the_model():
    kib = {s: d.activation_bytes_per_token(2) / 1024 for s, d in DIMS.items()}
    assert kib == {"0.6b": 30.0, "4b": 79.0, "8b": 100.0}
    assert DIMS["8b"].activation_bytes_per_token(4) == 2 * 100 * 1024


@pytest.mark.parametrize(
    ("shape", "free_gib"),
    [("0.6b", 138.0), ("0.6b", 6.0), ("4b", 130.0), ("4b", 14.0), ("8b", 124.0), ("8b", 60.0)],
)
def test_the_defaults_stay_where_they_fit(shape, free_gib):
    # an H200 (141 GB), an 8 GB card for 0.6B, 24 GB for 4B, an 80 GB card for 8B
    assert fit(shape, free_gib) == PACKED
    assert fit(shape, free_gib, PADDED, graphs=False) == PADDED


def test_the_8b_model_on_a_24_gb_card_gets_smaller_batches_that_fit():
    fitted = fit("8b", 6.5)  # 24 GB less 16 GB of weights and the CUDA context
    assert fitted == BatchSizes(26624, 104, 12288, limited_by_memory=True)
    room = room_tokens(DIMS["8b"], int(6.5 * GIB), 2)
    assert fitted.max_batch_tokens + fitted.cuda_graph_max_tokens <= room
    # without CUDA graphs the whole room goes to the batch
    alone = fit("8b", 6.5, graphs=False)
    assert alone.max_batch_tokens == room // TOKEN_STEP * TOKEN_STEP == 38912
    assert alone.infer_batch_size == 152 and alone.cuda_graph_max_tokens == 32768


def test_sizes_the_user_set_stay_and_the_others_fit_around_them():
    # the shipped config sets cuda_graph_max_tokens: the batch shrinks until both fit
    fitted = fit_batch_sizes(DIMS["8b"], int(6.5 * GIB), 2, PACKED, True, {"cuda_graph_max_tokens"})
    assert fitted == BatchSizes(18432, 72, 32768, limited_by_memory=True)
    assert room_tokens(DIMS["8b"], int(6.5 * GIB), 2) >= 2 * 18432
    # a batch budget set too big for the card: the graphs shrink as far as they go
    fixed = {"max_batch_tokens"}
    too_big = fit_batch_sizes(DIMS["8b"], int(6.5 * GIB), 2, PACKED, True, fixed)
    assert too_big == BatchSizes(65536, 256, TOKEN_STEP, limited_by_memory=True)
    every = {"max_batch_tokens", "infer_batch_size", "cuda_graph_max_tokens"}
    assert fit_batch_sizes(DIMS["8b"], GIB, 2, PACKED, True, every) == PACKED


def test_padded_defaults_shrink_in_proportion():
    fitted = fit("8b", 2.0, PADDED, graphs=False)
    assert fitted.max_batch_tokens == 12288 and fitted.infer_batch_size == 48


@pytest.mark.parametrize("shape", sorted(DIMS))
def test_fitted_sizes_fit_and_grow_with_free_memory(shape):
    previous = None
    for free_gib in [0.5 * k for k in range(2, 200)]:
        fitted = fit(shape, free_gib)
        room = room_tokens(DIMS[shape], int(free_gib * GIB), 2)
        need = fitted.max_batch_tokens + fitted.cuda_graph_max_tokens
        assert need <= room or fitted.max_batch_tokens == TOKEN_STEP
        assert fitted.max_batch_tokens % TOKEN_STEP == 0 and fitted.max_batch_tokens <= 65536
        assert fitted.cuda_graph_max_tokens % TOKEN_STEP == 0
        assert 1 <= fitted.infer_batch_size <= 256
        assert fitted.limited_by_memory is (fitted != PACKED)
        if previous is not None:
            assert fitted.max_batch_tokens >= previous.max_batch_tokens
        previous = fitted
    assert previous == PACKED


def test_a_larger_model_never_gets_larger_batches():
    for free_gib in (1, 3, 6, 10, 20, 40):
        sizes = [fit(s, free_gib).max_batch_tokens for s in ("0.6b", "4b", "8b")]
        assert sizes == sorted(sizes, reverse=True)


def test_almost_no_free_memory_gives_the_least_sizes():
    assert fit("8b", 0.0) == BatchSizes(TOKEN_STEP, 8, TOKEN_STEP, limited_by_memory=True)
    assert ACTIVATION_SHARE < 1


def test_dims_are_read_from_a_config():
    config = SimpleNamespace(
        hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, num_hidden_layers=36,
    )  # fmt: skip
    assert ModelDims.of(config) == DIMS["8b"]
    llama_like = SimpleNamespace(
        hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=4
    )
    assert ModelDims.of(llama_like) == ModelDims(1024, 4096, 16, 16, 64, 4)


def test_dims_of_the_benchmark_shapes_configs():
    pytest.importorskip("transformers")
    from reranker.testing.tiny_qwen3 import make_config

    for shape, dims in DIMS.items():
        assert ModelDims.of(make_config(shape)) == dims


class FakeCuda:
    def __init__(self, free_gib):
        self.free = int(free_gib * GIB)

    def mem_get_info(self, device):
        return self.free, 141 * GIB

    def memory_reserved(self, device):
        return GIB

    def memory_allocated(self, device):
        return GIB // 2  # half a GiB held by torch but unused: free to the backend


def fitted_backend(shape, free_gib, **options):
    """The backend's sizing step on a fake CUDA device with ``shape``'s config loaded."""
    torch = pytest.importorskip("torch")
    from reranker.backends.transformers import qwen3
    from reranker.formats.qwen3 import Qwen3TransformersOptions

    opts = Qwen3TransformersOptions(**options)
    backend = qwen3.Qwen3TransformersBackend.__new__(qwen3.Qwen3TransformersBackend)
    backend.options = opts
    backend._set_in_options = frozenset(opts.model_fields_set)
    for key, value in qwen3.GPU_PACKED_DEFAULTS.items():  # as _choose_batching does
        if key not in opts.model_fields_set:
            setattr(opts, key, value)
    backend.device = torch.device("cuda", 0)
    backend.dtype = torch.bfloat16
    backend._graphs_wanted = True
    backend._torch = SimpleNamespace(cuda=FakeCuda(free_gib))
    d = DIMS[shape]
    config = SimpleNamespace(
        hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
        num_attention_heads=d.num_attention_heads, num_key_value_heads=d.num_key_value_heads,
        head_dim=d.head_dim, num_hidden_layers=d.num_hidden_layers,
    )  # fmt: skip
    config.get_text_config = lambda: config
    backend._model = SimpleNamespace(config=config)
    backend._fit_batches()
    return backend


def test_the_backend_keeps_the_0_6b_defaults_and_lowers_the_8b_ones(caplog):
    small = fitted_backend("0.6b", 130.0)
    assert small.batch_sizing == "default"
    o = small.options
    assert (o.max_batch_tokens, o.infer_batch_size, o.cuda_graph_max_tokens) == (65536, 256, 32768)
    with caplog.at_level("INFO"):
        large = fitted_backend("8b", 6.0)  # + the half GiB torch holds unused
    assert large.batch_sizing == "memory"
    o = large.options
    assert (o.max_batch_tokens, o.infer_batch_size, o.cuda_graph_max_tokens) == (26624, 104, 12288)
    assert "batch sizes (memory): max_batch_tokens=26624" in caplog.text
    assert "6.5 GiB free" in caplog.text and "100 KiB of activations a token" in caplog.text


def test_the_backend_keeps_what_the_options_set(caplog):
    backend = fitted_backend("8b", 6.0, max_batch_tokens=65536)
    o = backend.options
    assert (o.max_batch_tokens, o.infer_batch_size, o.cuda_graph_max_tokens) == (65536, 256, 2048)
    assert backend.batch_sizing == "memory"
    assert "may run out of memory" in caplog.text  # 65536 tokens do not fit: said so
    every = dict(max_batch_tokens=8192, infer_batch_size=32, cuda_graph_max_tokens=4096)
    assert fitted_backend("8b", 6.0, **every).batch_sizing == "options"


def test_the_shipped_config_leaves_the_sized_options_to_the_backend():
    from pathlib import Path

    from reranker.config import load_settings, resolve_backend_options

    shipped = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    _, options = resolve_backend_options(load_settings(shipped, env={}), "qwen3_transformers", {})
    sized = {"max_batch_tokens", "infer_batch_size", "cuda_graph_max_tokens"}
    assert not sized & options.model_fields_set
