"""Statistics for ranking fidelity: does a NAS proxy rank candidates the way
their stand-alone (retrained from scratch) accuracies do?

A one-shot proxy gives each candidate architecture a score; a few candidates
are then trained alone to get their ground-truth accuracy.  The proxy is
useful to the degree its scores *order* the candidates like the accuracies.

* ``pearson``: linear correlation of the raw values.  Sensitive to scale and
  outliers; reported because papers report it, not as the main figure.
* ``spearman``: Pearson correlation of the average ranks (``rankdata``); the
  usual headline number for rank fidelity.
* ``kendall``: Kendall's tau-b, ``(C - D) / sqrt((n0 - n1) (n0 - n2))`` over
  all item pairs (C concordant, D discordant, n0 = n (n - 1) / 2, n1 / n2 the
  pairs tied in x / in y).  It reads directly as "how often does the proxy
  order a pair of candidates correctly", and handles ties (equal accuracies
  are common with small validation sets) like ``scipy.stats.kendalltau``.
* ``top_half`` / ``precision_at_k`` / ``top1_truth``: what a search actually
  uses, the top of the ranking: the GHN paper's "Top-50 of 100" protocol
  (of the truly best half, how many does the proxy put in its top half),
  and the true accuracy of the candidate the proxy would pick.
* ``bootstrap_ci``: a percentile bootstrap interval over candidates, since
  fidelity studies have few candidates (tens to hundreds) and a correlation
  from 30 items is very noisy.
* ``spearman_brown`` / ``seed_ceiling``: the ceiling any proxy can reach.
  The ground truth is itself noisy (retraining with another seed changes the
  accuracies), so the correlation between two seeds' accuracies bounds what
  a proxy can achieve against one seed; ``spearman_brown`` gives the
  reliability of the mean over k seeds from the pairwise correlation.

Conventions (all functions):

* Inputs are 1-D array-likes (``seed_ceiling``: 2-D), converted to float64.
* ``ValueError`` (message naming the problem) for inputs that are not 1-D,
  of unequal lengths, too short (fewer than 2 items for correlations and
  ``top_half``, fewer than 1 for ``top1_truth``) or holding non-finite values
  (nan / inf): a missing accuracy must be dropped by the caller, not silently
  ranked.
* A constant input makes a correlation undefined: it returns ``float('nan')``
  (not an error), so that a bootstrap resample that happens to be constant
  can be skipped.
* Ties in a score are broken by the lower index, so results are
  deterministic.
* Scalars are returned as Python floats.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np

__all__ = [
    "rankdata", "pearson", "spearman", "kendall", "correlations",
    "top_half", "precision_at_k", "top1_truth", "bootstrap_ci",
    "spearman_brown", "seed_ceiling",
]

_KENDALL_ROWS = 512  # rows of the pairwise sign matrix computed at a time (bounds memory)


def _vector(x, name: str, min_items: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.shape[0] < min_items:
        raise ValueError(f"{name} needs at least {min_items} item(s), got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{name} must be finite, got {a[bad]} at index {bad}")
    return a


def _pair(x, y, names=("x", "y"), min_items: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim == 1 and b.ndim == 1 and a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, "
                         f"got {a.shape[0]} and {b.shape[0]}")
    return _vector(a, names[0], min_items), _vector(b, names[1], min_items)


def rankdata(x) -> np.ndarray:
    """1-based ranks of ``x`` (float64); tied values get the average of the
    ranks they span (``scipy.stats.rankdata(x, 'average')``)."""
    a = _vector(x, "x", 0)
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # Start of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], n]                      # exclusive
    avg = (starts + 1 + ends) / 2.0                  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation; nan if either input is constant."""
    a, b = _pair(x, y)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    da = a - a.mean()
    db = b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return float(min(1.0, max(-1.0, r)))


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of average ranks; nan if either
    input is constant."""
    a, b = _pair(x, y)
    return pearson(rankdata(a), rankdata(b))


def partial_spearman(x, y, z) -> float:
    """Spearman correlation of ``x`` and ``y`` with ``z`` held fixed: the
    first-order partial correlation of their ranks,
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2) (1 - r_yz^2))`` with Spearman
    r's (equal to the Pearson correlation of the residuals of x's and y's
    ranks regressed on z's).  A score that only tracks ``z`` (say the
    parameter count) gets about 0 whatever its plain correlation; nan if any
    input is constant or z is a perfect rank predictor of x or y."""
    a, b = _pair(x, y)
    _, c = _pair(x, z, ("x", "z"))
    r_ab, r_ac, r_bc = spearman(a, b), spearman(a, c), spearman(b, c)
    den = (1.0 - r_ac * r_ac) * (1.0 - r_bc * r_bc)
    if not (np.isfinite(r_ab) and np.isfinite(den)) or den <= 0.0:
        return float("nan")
    return float(min(1.0, max(-1.0, (r_ab - r_ac * r_bc) / math.sqrt(den))))


def _tied_pairs(a: np.ndarray) -> int:
    _, counts = np.unique(a, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def kendall(x, y) -> float:
    """Kendall tau-b, ``(C - D) / sqrt((n0 - n1) (n0 - n2))``; pairs tied in
    x or y count in neither C nor D.  nan if either input is constant.
    O(n^2) time, memory bounded by computing the pair signs in row blocks."""
    a, b = _pair(x, y)
    n = a.shape[0]
    n0 = n * (n - 1) // 2
    n1, n2 = _tied_pairs(a), _tied_pairs(b)
    if n1 == n0 or n2 == n0:
        return float("nan")
    s = 0  # C - D over ordered pairs (each unordered pair counted twice)
    for lo in range(0, n, _KENDALL_ROWS):
        hi = min(n, lo + _KENDALL_ROWS)
        sa = np.sign(a[lo:hi, None] - a[None, :]).astype(np.int8)
        sb = np.sign(b[lo:hi, None] - b[None, :]).astype(np.int8)
        s += int(np.sum(sa * sb, dtype=np.int64))
    c_minus_d = s // 2
    tau = c_minus_d / math.sqrt(float(n0 - n1) * float(n0 - n2))
    return float(min(1.0, max(-1.0, tau)))


def correlations(x, y) -> Dict[str, float]:
    """``{"pearson", "spearman", "kendall"}`` of x against y."""
    a, b = _pair(x, y)
    return {"pearson": pearson(a, b), "spearman": spearman(a, b), "kendall": kendall(a, b)}


def _descending(a: np.ndarray) -> np.ndarray:
    """Indices from highest to lowest value, ties by lower index first."""
    return np.argsort(-a, kind="stable")


def top_half(truth) -> np.ndarray:
    """Indices (ascending) of the ``len(truth) // 2`` items with the highest
    truth, ties broken by the lower index (the "Top-50 of 100" protocol).
    Needs at least 2 items."""
    t = _vector(truth, "truth", 2)
    return np.sort(_descending(t)[: t.shape[0] // 2]).astype(np.int64)


def precision_at_k(score, truth, k: int) -> float:
    """Fraction of the k items ranked highest by ``score`` (ties: lower index
    first) whose truth is >= the k-th largest truth value, so items tied with
    the k-th best at the boundary count as top.  ``1 <= k <= n``."""
    s, t = _pair(score, truth, ("score", "truth"), min_items=1)
    n = s.shape[0]
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in 1..n, got k={k} with n={n}")
    k = int(k)
    threshold = np.sort(t)[n - k]          # k-th largest truth
    chosen = _descending(s)[:k]
    return float(np.count_nonzero(t[chosen] >= threshold) / k)


def top1_truth(score, truth) -> float:
    """Truth of the item with the highest score (ties: lower index), i.e.
    the stand-alone accuracy of the candidate the proxy would pick."""
    s, t = _pair(score, truth, ("score", "truth"), min_items=1)
    return float(t[int(np.argmax(s))])  # argmax returns the first maximum


def bootstrap_ci(fn: Callable[[np.ndarray, np.ndarray], float], x, y, *,
                 num_samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``fn(x, y)`` over items: each of the
    ``num_samples`` resamples draws n (x, y) pairs with replacement with
    ``numpy.random.default_rng(seed)``; resamples where ``fn`` returns nan
    (e.g. a constant resample) are skipped; if fewer than half of them are
    finite returns ``(nan, nan)``.  Deterministic given ``seed``."""
    a, b = _pair(x, y)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    num_samples = int(num_samples)
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_samples, n))
    values = np.array([float(fn(a[i], b[i])) for i in idx], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if 2 * finite.shape[0] < num_samples:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def spearman_brown(r: float, k: float) -> float:
    """Reliability of the mean of k measurements whose pairwise correlation
    is r: ``k r / (1 + (k - 1) r)``.  ``k >= 1`` (need not be an integer);
    r in [-1, 1]; nan in, nan out; nan where the denominator is 0."""
    r = float(r)
    k = float(k)
    if not math.isfinite(k) or k < 1:
        raise ValueError(f"k must be a finite number >= 1, got k={k}")
    if math.isnan(r):
        return float("nan")
    if not -1.0 <= r <= 1.0:
        raise ValueError(f"r must be a correlation in [-1, 1], got r={r}")
    denom = 1.0 + (k - 1.0) * r
    if denom == 0:
        return float("nan")
    return float(k * r / denom)


def seed_ceiling(truth_by_seed) -> Dict[str, float]:
    """Agreement of the ground truth with itself across training seeds.

    ``truth_by_seed`` is [candidates, seeds].  With >= 2 seeds: "pearson",
    "spearman", "kendall" are the means over all seed pairs (i < j) of that
    correlation between columns i and j (nan if any pair is undefined, i.e.
    a constant column); "spearman_brown" is ``spearman_brown(mean pairwise
    pearson, seeds)``, the reliability of the seed-mean ground truth;
    "seed_std" is the mean over candidates of the sample std (ddof=1) across
    seeds; "seeds" the number of seeds.  With 1 seed every value but "seeds"
    is nan.  Needs at least 2 candidates, finite values."""
    m = np.asarray(truth_by_seed, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"truth_by_seed must be 2-D [candidates, seeds], got shape {m.shape}")
    n, s = m.shape
    if n < 2:
        raise ValueError(f"truth_by_seed needs at least 2 candidates, got {n}")
    if s < 1:
        raise ValueError("truth_by_seed needs at least 1 seed, got 0")
    if not np.all(np.isfinite(m)):
        raise ValueError("truth_by_seed must be finite")
    nan = float("nan")
    if s == 1:
        return {"pearson": nan, "spearman": nan, "kendall": nan,
                "spearman_brown": nan, "seed_std": nan, "seeds": 1}
    per_pair = {"pearson": [], "spearman": [], "kendall": []}
    for i in range(s):
        for j in range(i + 1, s):
            for key, value in correlations(m[:, i], m[:, j]).items():
                per_pair[key].append(value)
    out = {key: float(np.mean(values)) for key, values in per_pair.items()}
    out["spearman_brown"] = spearman_brown(out["pearson"], s)
    out["seed_std"] = float(np.mean(np.std(m, axis=1, ddof=1)))
    out["seeds"] = s
    return out
