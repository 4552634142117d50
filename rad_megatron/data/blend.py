"""A weighted blend of sources as one deterministic stream of samples (MIL mixes several SFT sources).

The blend repeats with a period of K = the total samples of one epoch of every source. Within a period, Megatron's
`build_blending_indices` (megatron.core.datasets.helpers, the C++ helper BlendedDataset uses) assigns sample r to the
source whose share is furthest behind its weight, and numbers it within that source. Global sample k is sample
k % K of period k // K; a source that contributes c_s samples per period gives its m-th sample as
m = (k // K) * c_s + (its number within the period). So the stream is fixed by the weights and the sources alone,
is the same at any data-parallel size, and any position is found without reading what came before it.
The period's two arrays are cached as .npy (memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rad_megatron.data.packing import load_or_build
from rad_megatron.probe.report import write_json_atomic


class Blend:
    """Global sample id -> (source index, sample number within that source)."""

    def __init__(self, weights: list[float], samples_per_source: list[int], folder: Path):
        self.weights = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.period = int(sum(samples_per_source))
        key = hashlib.sha256(json.dumps([self.weights.tolist(), list(samples_per_source)]).encode()).hexdigest()[:16]
        folder = Path(folder) / f"blend-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        if len(weights) == 1:  # one source: the identity, no arrays
            self.source_of, self.number_in_period, self.per_period = None, None, [self.period]
            return
        if not (folder / "counts.json").is_file():
            source, number = self._build()
            load_or_build(folder / "source.npy", lambda: source)
            load_or_build(folder / "number.npy", lambda: number)
            write_json_atomic(folder / "counts.json", np.bincount(source, minlength=len(weights)).tolist())
        self.source_of = load_or_build(folder / "source.npy", None)
        self.number_in_period = load_or_build(folder / "number.npy", None)
        self.per_period = json.loads((folder / "counts.json").read_text())  # samples of each source per period

    def _build(self):
        from megatron.core.datasets import helpers

        source = np.zeros(self.period, dtype=np.int16)
        number = np.zeros(self.period, dtype=np.int64)
        helpers.build_blending_indices(source, number, self.weights, len(self.weights), self.period, False)
        return source, number

    def locate(self, k: int) -> tuple[int, int]:
        period, r = divmod(int(k), self.period)
        if self.source_of is None:
            return 0, int(k)
        s = int(self.source_of[r])
        return s, period * self.per_period[s] + int(self.number_in_period[r])
