"""An independent implementation of the Qwen3-Reranker model card's transformers recipe.

Written from the model card, sharing no code with the package: full logits at the last
position, log_softmax over [no, yes], unsorted batches of 8, left padding.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
    'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
    "<|im_end|>\n<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TASK = "Given a web search query, retrieve relevant passages that answer the query"


class ModelCardReranker:
    """The model card's code, wrapped so tests can call it."""

    def __init__(self, model_dir: str, max_length: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.max_length = max_length
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)

    def _inputs(self, pairs: list[str]):
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt")

    @torch.no_grad()
    def score(
        self, query: str, docs: list[str], instruction: str = TASK, batch_size: int = 8
    ) -> tuple[list[float], list[float]]:
        """(P(yes), logit(yes) - logit(no)) for each doc."""
        pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for doc in docs]
        probs: list[float] = []
        diffs: list[float] = []
        for start in range(0, len(pairs), batch_size):
            inputs = self._inputs(pairs[start : start + batch_size])
            logits = self.model(**inputs).logits[:, -1, :]
            yes, no = logits[:, self.yes], logits[:, self.no]
            log_probs = torch.nn.functional.log_softmax(torch.stack([no, yes], dim=1), dim=1)
            probs += log_probs[:, 1].exp().tolist()
            diffs += (yes - no).tolist()
        return probs, diffs
