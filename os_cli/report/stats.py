"""Streaming statistics for `inspect`: exact moments plus a uniform reservoir for quantiles.

`Stat` keeps exact count / mean / std / min / max of a stream of numbers (None and non-numbers are
counted as non-finite) and a uniform reservoir sample (Algorithm R) of at most `cap` values, from
which quantiles and histograms are computed (`"sampled": true` once the stream outgrew the cap).
Integer-valued streams (lengths) get integer bin edges (`"integer": true`): bin [a, b) holds a .. b - 1.
`PositionMeans` averages a per-token value at each token position. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = 20
RESERVOIR_PER_TOKEN = 200_000
RESERVOIR_PER_RECORD = 2_000_000
EXACT_INTEGERS = 2.0**53  # beyond this every float is a whole number: not a count, no integer bins


class Stat:
    """Exact count / mean / std / min / max plus a uniform reservoir for quantiles and histograms."""

    def __init__(self, cap: int = RESERVOIR_PER_TOKEN, seed: int = 0):
        self.cap = cap
        self._n = 0
        self.nonfinite = 0
        self._sum = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._buf = np.empty(0, dtype=np.float64)
        self._chunks: list[np.ndarray] = []
        self._kept = 0
        self._rng = np.random.default_rng(seed)
        self._pending: list[float] = []

    def add(self, value: Any) -> None:
        """One value (None or a non-number counts as non-finite); buffered, flushed in chunks."""
        self._pending.append(value)
        if len(self._pending) >= 8192:
            self._flush()

    def add_many(self, values: Iterable[Any]) -> None:
        if isinstance(values, np.ndarray):
            self._flush()  # keep stream order for the reservoir
            self._add_array(values.astype(np.float64, copy=False).ravel())
            return
        self._pending.extend(values)
        if len(self._pending) >= 8192:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._add_array(to_float_array(pending))

    def _add_array(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        finite = np.isfinite(arr)
        self.nonfinite += int(arr.size - finite.sum())
        arr = arr[finite]
        n = int(arr.size)
        if n == 0:
            return
        # Chan et al. parallel update of mean and M2.
        mean_b = float(arr.mean())
        m2_b = float(((arr - mean_b) ** 2).sum())
        total = self._n + n
        delta = mean_b - self._mean
        self._mean += delta * n / total
        self._m2 += m2_b + delta * delta * self._n * n / total
        self._sum += float(arr.sum())
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))
        self._reservoir_add(arr, self._n)
        self._n = total

    def _reservoir_add(self, arr: np.ndarray, seen_before: int) -> None:
        room = self.cap - self._kept
        if room > 0:
            take = arr[:room]
            self._chunks.append(take.copy())
            self._kept += take.size
            arr = arr[room:]
            seen_before += take.size
        if arr.size == 0:
            return
        if self._chunks:
            self._buf = np.concatenate([self._buf, *self._chunks]) if self._buf.size else np.concatenate(self._chunks)
            self._chunks = []
        # Algorithm R, vectorised: item i (0-based over the stream) replaces a random slot w.p. cap/(i+1).
        idx = np.arange(seen_before, seen_before + arr.size)
        slots = (self._rng.random(arr.size) * (idx + 1)).astype(np.int64)
        keep = slots < self.cap
        self._buf[slots[keep]] = arr[keep]

    def values(self) -> np.ndarray:
        self._flush()
        if self._chunks:
            self._buf = np.concatenate([self._buf, *self._chunks]) if self._buf.size else np.concatenate(self._chunks)
            self._chunks = []
        return self._buf

    @property
    def count(self) -> int:
        self._flush()
        return self._n

    def to_dict(self) -> dict:
        self._flush()
        out: dict[str, Any] = {"count": self._n, "nonfinite": self.nonfinite}
        if not self._n:
            out.update(mean=None, std=None, min=None, max=None, quantiles=None, histogram=None, sampled=False)
            return out
        vals = self.values()
        qs = np.quantile(vals, QUANTILES)
        integer = bool(max(-self.min, self.max) < EXACT_INTEGERS and np.all(vals == np.round(vals)))
        if integer:  # lengths, counts: integer edges, each bin holds whole values
            counts, edges = np.histogram(vals, bins=integer_edges(self.min, self.max))
        else:
            counts, edges = np.histogram(vals, bins=HIST_BINS, range=_hist_range(self.min, self.max))
        out.update(
            mean=self._mean,
            std=math.sqrt(self._m2 / self._n) if self._n > 1 else 0.0,
            min=self.min,
            max=self.max,
            quantiles={_qname(q): float(v) for q, v in zip(QUANTILES, qs)},
            histogram={
                "edges": [int(e) if integer else float(e) for e in edges],
                "counts": [int(c) for c in counts],
                "integer": integer,
            },
            sampled=self._n > self.cap,
        )
        return out


def _qname(q: float) -> str:
    return f"p{round(q * 100):02d}"


def integer_edges(lo: float, hi: float, bins: int = HIST_BINS) -> np.ndarray:
    """Integer bin edges for integer values from `lo` to `hi`: at most `bins` bins of an integer width,
    bin [a, b) holding the values a .. b - 1 (one bin per value while the range allows)."""
    start, stop = math.floor(lo), math.floor(hi) + 1
    width = max(1, -(-(stop - start) // bins))
    count = -(-(stop - start) // width)
    return start + width * np.arange(count + 1)


def _hist_range(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    pad = max(abs(lo) * 1e-3, 0.5)
    return lo - pad, hi + pad


def to_float_array(values: Iterable[Any]) -> np.ndarray:
    """Floats; None and anything that is not a number become NaN (counted as non-finite)."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).ravel()
    values = list(values)
    if all(v is None or type(v) in (int, float) for v in values):
        return np.asarray(values, dtype=np.float64)  # None -> NaN
    return np.asarray([v if is_number(v) else math.nan for v in values], dtype=np.float64)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(v: Any) -> bool:
    return is_number(v) and math.isfinite(v)


class PositionMeans:
    """Mean of a per-token value at each token position (0 = first generated token)."""

    def __init__(self):
        self.sums = np.zeros(0, dtype=np.float64)
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: Iterable[Any]) -> None:
        arr = to_float_array(values)
        if arr.size > self.sums.size:
            grow = arr.size - self.sums.size
            self.sums = np.concatenate([self.sums, np.zeros(grow)])
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
        ok = np.isfinite(arr)
        self.sums[: arr.size][ok] += arr[ok]
        self.counts[: arr.size][ok] += 1

    def to_dict(self) -> dict | None:
        if not self.counts.any():
            return None
        means = [float(s / c) if c else None for s, c in zip(self.sums, self.counts)]
        return {"mean": means, "count": [int(c) for c in self.counts]}


def ess_fraction(log_weights: list[float]) -> float | None:
    """Kish effective sample size of the sequence importance weights, divided by their number."""
    if not log_weights:
        return None
    lw = np.asarray(log_weights, dtype=np.float64)
    lw = lw - lw.max()
    w = np.exp(lw)
    return float(w.sum() ** 2 / (w * w).sum() / lw.size)
