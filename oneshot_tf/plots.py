"""PNG plots of a search (matplotlib, headless)."""

from __future__ import annotations

import io
from typing import Any, Dict, Optional, Sequence

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


#: Box colours of the node kinds that the package's spaces use; other kinds
#: get colours from ``_EXTRA_COLORS`` in order of appearance.
_KIND_COLORS = {
    "input": "#a6cee3",
    "conv": "#fdbf6f",
    "op": "#b2df8a",
    "combine": "#fb9a99",
    "output": "#cab2d6",
}
_EXTRA_COLORS = ("#ffff99", "#8dd3c7", "#bebada", "#80b1d3", "#fccde5", "#d9d9d9", "#bc80bd")


def scatter_png(x: Sequence[float], y: Sequence[float], *, xlabel: str, ylabel: str, title: str = "",
                highlight: int = -1) -> bytes:
    """One scatter plot; point ``highlight`` (an index, -1: none) is marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(x, y, s=12, alpha=0.7)
    if 0 <= highlight < len(x):
        ax.scatter([x[highlight]], [y[highlight]], s=80, facecolors="none", edgecolors="tab:red",
                   linewidths=2, label="best")
        ax.legend(loc="lower right")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _graph_layers(graph: Dict[str, Any]):
    """(node ids in topological order, layer of every id, predecessors, successors).

    The layer of a node is the length of the longest path from a source to
    it.  Raises ValueError for duplicate ids, unknown edge ends or a cycle.
    """
    ids = [str(n["id"]) for n in graph["nodes"]]
    if len(set(ids)) != len(ids):
        raise ValueError("graph has duplicate node ids")
    preds: Dict[str, list] = {i: [] for i in ids}
    succs: Dict[str, list] = {i: [] for i in ids}
    for edge in graph["edges"]:
        src, dst = (str(e) for e in edge)
        if src not in preds or dst not in preds:
            raise ValueError(f"edge {src!r} -> {dst!r} names an unknown node")
        succs[src].append(dst)
        preds[dst].append(src)
    indeg = {i: len(preds[i]) for i in ids}
    ready = [i for i in ids if indeg[i] == 0]
    order = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for s in succs[node]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    if len(order) != len(ids):
        raise ValueError("graph has a cycle")
    layer: Dict[str, int] = {}
    for node in order:
        layer[node] = max((layer[p] + 1 for p in preds[node]), default=0)
    return order, layer, preds, succs


def _ordered_rows(order, layer, preds, succs, sweeps: int = 6):
    """Rows of a layered drawing with every edge one row long.

    An edge that skips rows gets a chain of dummy points (ids
    ``("dummy", edge_index, row)``) in the rows it crosses, so it is routed
    between boxes.  Rows are ordered by the barycentre heuristic (alternate
    down and up sweeps) to reduce crossings.  Returns (rows, x of every row
    member, the point chain of every edge).
    """
    rows = [[] for _ in range(max(layer.values()) + 1)] if order else []
    for node in order:
        rows[layer[node]].append(node)
    up = {n: list(preds[n]) for n in order}
    down = {n: list(succs[n]) for n in order}
    chains = []
    k = 0
    for src in order:
        for dst in succs[src]:
            chain = [src] + [("dummy", k, r) for r in range(layer[src] + 1, layer[dst])] + [dst]
            k += 1
            for a, b in zip(chain, chain[1:]):
                down.setdefault(a, []).append(b)
                up.setdefault(b, []).append(a)
            for d in chain[1:-1]:
                rows[d[2]].append(d)
            chains.append(chain)
    for n in order:  # keep only the one-row links (real edges that skip rows go via dummies)
        down[n] = [m for m in down[n] if not (m in layer and layer[m] - layer[n] > 1)]
        up[n] = [m for m in up[n] if not (m in layer and layer[n] - layer[m] > 1)]

    def width(n):
        return 0.3 if isinstance(n, tuple) else 1.0

    x = {}

    def place(row):
        total = sum(width(n) for n in row)
        at = -total / 2
        for n in row:
            x[n] = at + width(n) / 2
            at += width(n)

    for row in rows:
        place(row)
    for sweep in range(sweeps):
        downward = sweep % 2 == 0
        nbrs = up if downward else down
        for row in (rows[1:] if downward else rows[-2::-1]):
            index = {n: j for j, n in enumerate(row)}

            def key(n):
                near = nbrs.get(n, [])
                return (sum(x[m] for m in near) / len(near) if near else x[n], index[n])

            row.sort(key=key)
            place(row)
    return rows, x, chains


def space_architecture_png(space, arch, title: str = "") -> Optional[bytes]:
    """``architecture_png`` of ``space.graph(arch)``, or ``None`` for a
    space that does not describe its architectures as graphs."""
    try:
        graph = space.graph(arch)
    except NotImplementedError:
        return None
    return architecture_png(graph, title=title)


def architecture_png(graph: Dict[str, Any], title: str = "") -> bytes:
    """PNG drawing of an architecture graph (``SearchSpace.graph``).

    Layered layout, top to bottom: a node's row is the length of the longest
    path from a source to it; the nodes of a row are spread horizontally,
    ordered to reduce edge crossings.  Boxes carry the labels and are
    coloured by kind (legend at the side); arrows are the edges, routed
    between the boxes of the rows they skip.  Raises ValueError for a graph
    that is not a DAG over its nodes.
    """
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path

    order, layer, preds, succs = _graph_layers(graph)
    rows, x, chains = _ordered_rows(order, layer, preds, succs)
    info = {str(n["id"]): n for n in graph["nodes"]}
    colors = dict(_KIND_COLORS)
    kinds = []
    for n in graph["nodes"]:
        kind = str(n.get("kind", ""))
        if kind not in kinds:
            kinds.append(kind)
        if kind not in colors:
            colors[kind] = _EXTRA_COLORS[(len(colors) - len(_KIND_COLORS)) % len(_EXTRA_COLORS)]

    n_rows = max(len(rows), 1)
    span = max([x[n] for n in x] + [0.5]) - min([x[n] for n in x] + [-0.5]) + 1.0
    longest = max((len(str(n.get("label", n["id"]))) for n in graph["nodes"]), default=1)
    unit_in = max(1.45, 0.095 * longest + 0.35)   # inches per box slot
    row_in = 0.66                                 # inches per row
    legend_in = 1.3
    width = max(5.0, unit_in * max(span, 2.0) + legend_in)
    lines = textwrap.wrap(title, width=max(20, int(width * 11))) if title else []
    title_in = 0.25 + 0.2 * len(lines)
    height = max(2.5, row_in * n_rows + title_in + 0.1)
    fig = plt.figure(figsize=(width, height))
    ax_w = (width - legend_in) / width
    ax = fig.add_axes([0.0, 0.05 / height, ax_w, 1 - (title_in + 0.05) / height])
    half = max(span, 2.0) / 2
    ax.set_xlim(-half, half)
    ax.set_ylim(-(n_rows - 0.5), 0.5)
    ax.axis("off")

    box_w, box_h = 0.86, 0.5
    for node in order:
        cx, cy = x[node], -layer[node]
        ax.add_patch(FancyBboxPatch((cx - box_w / 2, cy - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0,rounding_size=0.08",
                                    fc=colors[str(info[node].get("kind", ""))], ec="#333333",
                                    lw=1.0, zorder=2))
        ax.text(cx, cy, str(info[node].get("label", node)), ha="center", va="center",
                fontsize=9, zorder=3)

    # ports: edges leave a box from its bottom and enter it at its top,
    # spread along the side in the order of the neighbouring points
    out_ports: Dict[Any, list] = {}
    in_ports: Dict[Any, list] = {}
    for c, chain in enumerate(chains):
        out_ports.setdefault(chain[0], []).append((x[chain[1]], c))
        in_ports.setdefault(chain[-1], []).append((x[chain[-2]], c))

    def port(ports, node, c):
        ranked = sorted(ports[node])
        j = [cc for _, cc in ranked].index(c)
        step = min(0.14, 0.7 * box_w / max(len(ranked), 1))
        return x[node] + (j - (len(ranked) - 1) / 2) * step

    for c, chain in enumerate(chains):
        pts = [(port(out_ports, chain[0], c), -layer[chain[0]] - box_h / 2)]
        pts += [(x[d], -d[2]) for d in chain[1:-1]]
        pts.append((port(in_ports, chain[-1], c), -layer[chain[-1]] + box_h / 2))
        verts, codes = [pts[0]], [Path.MOVETO]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            dy = (y0 - y1) / 2
            verts += [(x0, y0 - dy), (x1, y1 + dy), (x1, y1)]
            codes += [Path.CURVE4] * 3
        ax.add_patch(FancyArrowPatch(path=Path(verts, codes), arrowstyle="-|>",
                                     mutation_scale=10, lw=0.9, color="#444444", zorder=1))
    fig.legend(handles=[Patch(fc=colors[k], ec="#333333", label=k or "(none)") for k in kinds],
               loc="upper right", bbox_to_anchor=(1.0, 1 - title_in / height),
               fontsize=8, frameon=False, title="kind", title_fontsize=8)
    if lines:
        fig.text(0.5, 1 - 0.12 / height, "\n".join(lines), ha="center", va="top", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def panels_png(panels: Sequence[Dict[str, Any]], *, ylabel: str, title: str = "", columns: int = 4) -> bytes:
    """A grid of scatter plots, one per panel: ``{"x", "y", "xlabel",
    "title"}``, optionally ``"ylabel"`` (else ``ylabel``) and ``"ylo"``/
    ``"yhi"`` (a vertical bar from ylo to yhi at each point, e.g. the range
    over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(panels))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        x, y = np.asarray(p["x"], np.float64), np.asarray(p["y"], np.float64)
        if "ylo" in p:
            ax.vlines(x, p["ylo"], p["yhi"], color="0.75", linewidth=1)
        ax.scatter(x, y, s=14, alpha=0.8)
        ax.set_xlabel(p["xlabel"], fontsize=8)
        ax.set_ylabel(p.get("ylabel", ylabel), fontsize=8)
        ax.set_title(p["title"], fontsize=8)
        ax.tick_params(labelsize=7)
    return figure_png(fig, title)


def figure_png(fig, title: str = "") -> bytes:
    """A finished matplotlib figure as PNG bytes (a title on top, tight
    layout, 90 dpi), the figure closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
