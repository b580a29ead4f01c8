"""CUDA graphs of the transformers backend's packed forward pass.

Launching one packed batch through the compiled decoder takes the host ~50 ms of Python
(28 layers, ~700 kernels); a GPU runs a 16k-token batch in ~28 ms. Where the GPU has
nothing else queued, as for a call's first batches, it waits for the host. A CUDA graph
launches the whole forward pass at once.

A graph has fixed shapes, so a batch is padded to the smallest of a few
:class:`StaticShape` s (:func:`pad_packed`), each captured once at startup:

- the pad tokens form one extra "dummy" sequence after the real ones; unused sequence
  slots are empty (zero-length) sequences; unused last-row slots read row 0;
- with shared query prefixes (``packing``) the gathered key rows are padded too: the
  dummy sequence reads its own rows, and a "spare" sequence without queries reads as
  many rows from the start of the batch as fill the shape (reading rows is harmless; no
  real sequence reads a pad row; a sequence without queries costs the attention kernel
  nothing, where the dummy's queries would each have read all those rows);
- the dummy, spare and empty sequences hold none of the rows read out;
- the attention kernel gets the shape's bounds as its longest query / key lengths.

Every real row sees exactly the keys it sees unpadded, and every other operation works
row by row, so the real rows' results are those of the unpadded batch (up to the GEMM
library picking another algorithm for another row count).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from reranker.backends.transformers.packing import PackedBatch, device_columns, host_buffer

# Token counts of the captured shapes: every FINE_STEP up to FINE_UP_TO tokens, then
# steps of an eighth of the power of two below (1,024 up to 16,384, 2,048 up to 32,768,
# ...), so that a padded batch wastes at most 1/8 of its tokens, and a small request (10
# documents: ~6,000 tokens) fewer than 512 (at the 0.6B size on an H200, ~1,800 pad
# tokens took ~3.5 ms of a ~10 ms forward pass).
FINE_STEP = 512
FINE_UP_TO = 8192


@dataclass(frozen=True)
class StaticShape:
    """The fixed sizes of one captured forward pass."""

    tokens: int  # packed rows
    keys: int  # gathered key rows (== tokens without shared prefixes)
    sequences: int  # attention sequences, the dummy (and spare) one included
    rows: int  # rows read out (one per prompt)
    shared: bool  # whether batches gather their keys (shared query prefixes)

    @property
    def extra_sequences(self) -> int:
        """Sequence slots a padded batch needs beyond its own: the dummy one, and with
        shared prefixes the spare one."""
        return 2 if self.shared else 1

    @property
    def key_runs(self) -> int:
        """Runs of gathered key rows: at most two per sequence."""
        return 2 * self.sequences

    def fits(self, batch: PackedBatch) -> bool:
        """Whether ``batch`` pads to this shape."""
        pad = self.tokens - len(batch.ids)
        if pad < 0 or (batch.key_run_starts is not None) != self.shared:
            return False
        if len(batch.query_lengths) + self.extra_sequences > self.sequences:
            return False
        if len(batch.last_rows) > self.rows:
            return False
        # the dummy sequence reads its own pad rows as keys (causal attention), and the
        # spare one the rest of the shape's key rows: none may be left short
        return not self.shared or sum(batch.key_lengths) + pad <= self.keys

    def column_sizes(self) -> list[int]:
        """Sizes of the device columns, in ``packing.device_columns`` order."""
        sequences = self.sequences
        per_sequence = [sequences, sequences, sequences + 1, sequences + 1, self.rows]
        keys = [self.key_runs, self.key_runs, self.sequences + 1] if self.shared else []
        return [self.tokens, *per_sequence, *keys]


def shape_tokens(max_tokens: int) -> list[int]:
    """Token counts of the captured shapes up to ``max_tokens``, smallest first: every
    :data:`FINE_STEP` up to :data:`FINE_UP_TO`, then an eighth of the power of two below
    apart."""
    counts = list(range(FINE_STEP, min(FINE_UP_TO, max_tokens) + 1, FINE_STEP))
    tokens = FINE_UP_TO
    while True:
        tokens += max(FINE_STEP, (1 << (tokens.bit_length() - 1)) // 8)
        if tokens > max_tokens:
            return counts
        counts.append(tokens)


def static_shapes(max_tokens: int, rows: int, shared: bool) -> list[StaticShape]:
    """Shapes of :func:`shape_tokens` tokens up to ``max_tokens``, smallest first. Each
    holds ``rows`` prompts and a sequence of its own for each (shared prefixes included),
    plus the dummy (and spare) sequence; with ``shared``, half as many extra key rows as
    tokens for the prompts to read their prefixes from (a batch that reads more runs
    unpadded)."""
    return [
        StaticShape(
            tokens,
            tokens + tokens // 2 if shared else tokens,
            2 * rows + (2 if shared else 1),
            rows,
            shared,
        )
        for tokens in shape_tokens(max_tokens)
    ]


def pad_packed(batch: PackedBatch, shape: StaticShape, pad_id: int) -> PackedBatch:
    """``batch`` laid out with ``shape`` 's sizes (see the module docstring); it must fit."""
    if not shape.fits(batch):
        raise ValueError(f"batch of {len(batch.ids)} tokens does not fit {shape}")
    real, fillers = len(batch.ids), shape.sequences - len(batch.query_lengths) - 1
    pad = shape.tokens - real
    ids = array("q", batch.ids)
    ids.extend([pad_id] * pad)
    padded = replace(
        batch,
        ids=ids,
        query_lengths=[*batch.query_lengths, pad, *[0] * fillers],
        position_starts=[*batch.position_starts, 0, *[0] * fillers],
        last_rows=[*batch.last_rows, *[0] * (shape.rows - len(batch.last_rows))],
        row_counts=[*batch.row_counts, 0, *[0] * fillers],
    )
    if batch.key_run_starts is None:
        padded.key_lengths = padded.query_lengths
        return padded
    # the dummy reads its own rows; the spare sequence (no queries) the rest of the shape
    spare = shape.keys - sum(batch.key_lengths) - pad
    run_starts = [*batch.key_run_starts, real, 0]
    run_lengths = [*batch.key_run_lengths, pad, spare]
    unused_runs = shape.key_runs - len(run_starts)
    padded.key_run_starts = [*run_starts, *[0] * unused_runs]
    padded.key_run_lengths = [*run_lengths, *[0] * unused_runs]
    padded.key_lengths = [*batch.key_lengths, pad, spare, *[0] * (fillers - 1)]
    return padded


@dataclass
class _Captured:
    graph: Any
    inputs: Any  # the static int64 device buffer the graph reads
    output: Any  # the static float32 device tensor it writes
    # pinned host buffers of the inputs' size, used in turn (no pinning per batch), each
    # with a CUDA event: the last copy out of it has been done
    staging: list[tuple[Any, Any]]
    turn: int = 0  # the staging buffer to use next


# Staging buffers per shape: a call may replay one shape several times, and the next call
# is started while the device still runs this one (the service overlaps calls), so the
# copy out of a single buffer would make the host wait for the device to catch up.
STAGING_BUFFERS = 4

# forward(a padded batch's columns on the device, its shape) -> one float32 logit per row
PackedForward = Callable[[list[Any], StaticShape], Any]


class BatchGraphs:
    """One CUDA graph per :class:`StaticShape` of a packed forward pass; :meth:`run`
    replays the smallest graph that a batch fits."""

    def __init__(
        self, torch: Any, device: Any, shapes: list[StaticShape], forward: PackedForward
    ) -> None:
        self._torch = torch
        self._device = device  # a CUDA torch.device
        self.shapes = sorted(shapes, key=lambda s: s.tokens)
        self._forward = forward
        self._captured: dict[StaticShape, _Captured] = {}
        self.replays = 0

    @property
    def max_tokens(self) -> int:
        """Tokens of the largest shape."""
        return self.shapes[-1].tokens

    def capture(self, example: PackedBatch, pad_id: int) -> None:
        """Capture every shape, largest first, into one memory pool (graphs run one at a
        time, so they can share it); ``example`` (any batch that fits the smallest shape)
        supplies the values of a warm-up pass at each shape, which also compiles it."""
        torch = self._torch
        with torch.cuda.device(self._device):
            pool = torch.cuda.graph_pool_handle()
            for shape in reversed(self.shapes):
                ids, columns = device_columns(pad_packed(example, shape, pad_id))
                host = torch.frombuffer(host_buffer(ids, columns), dtype=torch.int64)
                inputs = host.to(self._device)
                views = list(inputs.split(shape.column_sizes()))
                self._forward(views, shape)  # warm-up: compiles, autotunes, allocates
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    output = self._forward(views, shape)
                graph.replay()  # the first replay uploads the graph: not on a request's time
                staging = [
                    (torch.empty_like(host).pin_memory(), torch.cuda.Event())
                    for _ in range(STAGING_BUFFERS)
                ]
                self._captured[shape] = _Captured(graph, inputs, output, staging)
            torch.cuda.synchronize()

    def shape_for(self, batch: PackedBatch) -> StaticShape | None:
        """The smallest shape ``batch`` fits, or None."""
        return next((shape for shape in self.shapes if shape.fits(batch)), None)

    def run(self, batch: PackedBatch, pad_id: int) -> Any | None:
        """Logits of ``batch`` 's rows from a graph replay (a new device tensor), or None
        where no captured shape fits it. The inputs go to the device from the shape's
        pinned buffer, so the host does not wait for the GPU."""
        shape = self.shape_for(batch)
        if shape is None:
            return None
        torch = self._torch
        captured = self._captured[shape]
        ids, columns = device_columns(pad_packed(batch, shape, pad_id))
        staging, copied = captured.staging[captured.turn]
        captured.turn = (captured.turn + 1) % len(captured.staging)
        copied.synchronize()  # done long ago, unless the device is that far behind
        staging.copy_(torch.frombuffer(host_buffer(ids, columns), dtype=torch.int64))
        with torch.cuda.device(self._device):
            captured.inputs.copy_(staging, non_blocking=True)
            copied.record()
            captured.graph.replay()
            self.replays += 1
            # the next replay of any graph in the pool may overwrite the static output
            return captured.output[: len(batch.last_rows)].clone()
