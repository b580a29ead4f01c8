"""Test inputs shared by the parity tests: >= 50 pairs with duplicates, blanks, long docs."""

from __future__ import annotations

QUERIES = [
    "What is the capital of France?",
    "how do vaccines train the immune system",
    "python list comprehension syntax",
    "¿Dónde está la biblioteca más grande del mundo?",
]

_LONG = " ".join(
    f"Section {i}: the committee reviewed budget line {i * 7} and noted delays in delivery."
    for i in range(120)
)

DOCS = [
    "Paris is the capital and most populous city of France.",
    "Bananas are rich in potassium and are usually yellow when ripe.",
    "Vaccines expose the immune system to a harmless piece of a pathogen.",
    "List comprehensions provide a concise way to create lists: [x*x for x in range(10)].",
    "La Biblioteca del Congreso en Washington es una de las más grandes del mundo.",
    "Paris is the capital and most populous city of France.",  # duplicate
    "",  # blank
    "   \n\t ",  # whitespace only
    None,
    _LONG,  # longer than max_model_len: truncated
    "Berlin is the capital of Germany; Paris, of France.",
    "The mitochondria is the powerhouse of the cell.",
    "东京是日本的首都。",
    "Emoji test 🚀🔥 and accents: naïve café résumé.",
    "def f(x):\n    return [i for i in x if i % 2 == 0]\n",
    _LONG[: len(_LONG) // 3],
    "Vaccines expose the immune system to a harmless piece of a pathogen.",  # duplicate
]

MAX_MODEL_LEN = 512
