"""PNG plots of a search (matplotlib, headless)."""

from __future__ import annotations

import io
from typing import Any, Dict, Sequence

import numpy as np


def candidates_png(records: Sequence[Dict[str, Any]], title: str = "") -> bytes:
    """Histogram of scores, score vs parameters and (if present) KL vs score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([r["score"] for r in records])
    params = np.array([r["params"] for r in records])
    has_kl = bool(records) and "kl" in records[0]
    fig, axes = plt.subplots(1, 3 if has_kl else 2, figsize=(13 if has_kl else 9, 3.8))
    axes[0].hist(scores, bins=min(30, max(5, len(scores) // 3)), color="tab:blue")
    axes[0].set(xlabel="proxy score (validation accuracy)", ylabel="candidates",
                title=f"{len(scores)} candidates")
    axes[1].scatter(params, scores, s=10, alpha=0.7)
    axes[1].set(xlabel="stand-alone parameters", ylabel="proxy score", title="score vs size")
    if has_kl:
        axes[2].scatter(scores, [r["kl"] for r in records], s=10, alpha=0.7, color="tab:orange")
        axes[2].set(xlabel="proxy score", ylabel="symmetrized KL to all-on", title="KL vs score")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
