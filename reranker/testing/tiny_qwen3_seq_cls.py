"""Qwen3-Reranker as a sequence classifier: the standard conversion, and an offline tiny
one for tests.

A Qwen3-Reranker (``Qwen3ForCausalLM``) scores P(yes) = sigmoid(logit(yes) - logit(no)) at
the prompt's last token. Its conversion to ``Qwen3ForSequenceClassification`` with one
label (as Qwen3-Reranker-0.6B-seq-cls is made) keeps the decoder and sets the score head
to ``lm_head[yes] - lm_head[no]``: the classifier's logit at the last token is
logit(yes) - logit(no), so its sigmoid is the original's P(yes), up to float error. The
converted checkpoint reads the same prompt (reranker.formats.qwen3_prompt).

CLI::

    python -m reranker.testing.tiny_qwen3_seq_cls OUT_DIR [--shape tiny|0.6b] [--seed 0]
    python -m reranker.testing.tiny_qwen3_seq_cls OUT_DIR --source QWEN3_RERANKER_DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from reranker.testing.files import weights_like_config

BUILDER_VERSION = 1  # bump when a built model changes
MARKER = "reranker_test_model.json"
FAMILY = "qwen3-seq-cls"
ARCHITECTURE = "Qwen3ForSequenceClassification"


def convert(source: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Save ``source`` (a Qwen3-Reranker, ``Qwen3ForCausalLM``) as a one-label
    ``Qwen3ForSequenceClassification`` in ``out_dir``, with its tokenizer; the score head
    is ``lm_head[yes] - lm_head[no]``, computed in float32, then saved in ``dtype``."""
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Qwen3ForCausalLM,
        Qwen3ForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    from reranker.formats.qwen3_prompt import NO_TOKEN_ID, YES_TOKEN_ID

    hf_logging.disable_progress_bar()
    source, out = str(source), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    causal = Qwen3ForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    config: Any = AutoConfig.from_pretrained(source)
    config.architectures = [ARCHITECTURE]
    config.num_labels = 1
    if config.pad_token_id is None:  # the classifier finds each row's last token by it
        config.pad_token_id = tokenizer.pad_token_id
    model = Qwen3ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.model.load_state_dict(causal.model.state_dict())
        head = causal.get_output_embeddings().weight
        model.score.weight.copy_((head[YES_TOKEN_ID] - head[NO_TOKEN_ID])[None, :])
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    weights_like_config(out)
    return out


def build_model(
    out_dir: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32"
) -> Path:
    """The tiny (or 0.6B-shaped) random Qwen3 reranker of
    :mod:`reranker.testing.tiny_qwen3`, with its real tokenizer, converted into
    ``out_dir``. A directory this builder already made the same way is left as it is."""
    from reranker.testing import tiny_qwen3

    out = Path(out_dir)
    marker = {
        "family": FAMILY,
        "architecture": ARCHITECTURE,
        "shape": shape,
        "seed": seed,
        "dtype": dtype,
        "builder_version": BUILDER_VERSION,
        "source_builder_version": tiny_qwen3.BUILDER_VERSION,
    }
    try:
        if json.loads((out / MARKER).read_text()) == marker:
            return out
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(prefix="tiny-qwen3-") as tmp:
        source = tiny_qwen3.build_model(Path(tmp) / "causal", shape=shape, seed=seed)
        convert(source, out, dtype=dtype)
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--source", help="a Qwen3-Reranker checkpoint to convert (local dir)")
    parser.add_argument("--shape", choices=["tiny", "0.6b"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    if args.source:
        print(convert(args.source, args.out_dir, dtype=args.dtype))
    else:
        print(build_model(args.out_dir, shape=args.shape, seed=args.seed, dtype=args.dtype))


if __name__ == "__main__":
    main()
