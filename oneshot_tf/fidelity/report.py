"""The outputs of a fidelity study: the table (CSV, Markdown, printed), the
per-candidate CSV, the plots (PNG and TensorBoard)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Dict, List

import numpy as np

from oneshot_tf import io_utils
from oneshot_tf import plots

#: The CSV's columns, in order (a row leaves blank what does not apply to it).
COLUMNS = ("name", "kind", "n", "pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo", "spearman_hi",
           "kendall", "kendall_lo", "kendall_hi", "top_half_pearson", "top_half_spearman", "top_half_kendall",
           "precision_at_k", "top_k", "top1_accuracy", "best_accuracy", "median_accuracy", "vs_params",
           "vs_params_lo", "vs_params_hi", "given_params", "given_params_lo", "given_params_hi", "spearman_brown",
           "mean_ceiling", "seed_std", "seeds", "train_seconds", "seconds_per_candidate", "error")

#: The Markdown table's columns.
HEADER = ("score", "n", "Pearson", "Spearman", "Kendall", "top half P / S / K", "P@k", "top-1 pick", "vs params",
          "given params", "train s", "s / cand.")


def _table_row(*cells, last=None) -> str:
    """A Markdown row of ``cells``, blank cells up to the last column, and
    ``last`` (when given) in the last column."""
    cells = [str(c) for c in cells]
    cells += [""] * (len(HEADER) - len(cells) - (last is not None))
    if last is not None:
        cells.append(str(last))
    return "| " + " | ".join(cells) + " |"


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _ci(stats: Dict[str, Any], name: str) -> str:
    value = _num(stats.get(name))
    lo, hi = stats.get(f"{name}_lo"), stats.get(f"{name}_hi")
    if lo is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return value
    return f"{value} [{lo:.2f}, {hi:.2f}]"


def _seconds(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"


def _flag(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def csv_rows(rows, summary) -> List[Dict[str, Any]]:
    out = []
    for r in rows:
        d = {"name": r.name, "kind": r.kind, "train_seconds": r.train_seconds,
             "seconds_per_candidate": r.seconds_per_candidate, "error": r.error,
             "best_accuracy": summary["best"], "median_accuracy": summary["median"]}
        d.update({k: v for k, v in r.stats.items() if k in COLUMNS})
        out.append({k: ("" if d.get(k) is None else d.get(k)) for k in COLUMNS})
    return out


def markdown(rows, summary, title: str) -> str:
    s = summary
    lines = [f"# {title}", "",
             f"N = {s['candidates']} candidates scored by every method; M = {s['truth_candidates']} of them, "
             + (f"stratified over {s['stratified_by']}'s score ranking" if s["stratified_by"] else
                "the first ones (no method scored: a random sample)")
             + f", trained "
             f"stand-alone for {s['truth_steps']} steps with {s['seeds']} seed(s) each; ground truth: their mean "
             f"{s['truth_metric']} accuracy (best of the sample {s['best']:.4f}, median {s['median']:.4f}). "
             f"Brackets: 95% bootstrap intervals over the M candidates. Top half: the M/2 best by ground truth "
             f"(GHN's Top-50). vs params: Spearman minus the parameter count's, with its paired interval. Given "
             f"params: the Spearman at a fixed parameter count (partial rank correlation): what a score ranks "
             f"beyond size.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        st = r.stats
        if r.error:
            lines.append(_table_row(r.name, f"error: {r.error.splitlines()[0][:200]}"))
            continue
        if r.kind == "ceiling":
            if st.get("seeds", 1) < 2:
                lines.append(_table_row(r.name, st.get("n"), "unknown: one seed per candidate (--truth_seeds=2 "
                                        "or more measures it)", last=_seconds(r.seconds_per_candidate)))
            else:
                lines.append(_table_row(
                    r.name, st["n"], _ci(st, "pearson"), _ci(st, "spearman"), _ci(st, "kendall"),
                    f"{st['seeds']}-seed mean's reliability (Spearman-Brown) {_num(st.get('spearman_brown'))}, "
                    f"so a score correlates with it at most ~{_num(st.get('mean_ceiling'), 2)}; seed std "
                    f"{_num(st.get('seed_std'), 4)}", last=_seconds(r.seconds_per_candidate)))
            continue
        if "pearson" not in st:
            lines.append(_table_row(r.name, st.get("n"), st.get("note", "")))
            continue
        top = " / ".join(_num(st.get(f"top_half_{k}"), 2) for k in ("pearson", "spearman", "kendall"))
        vs = _ci(st, "vs_params") if "vs_params" in st else ""
        given = _ci(st, "given_params") if "given_params" in st else ""
        # a member's costs are its method's row's; a baseline trains nothing
        train = "-" if r.kind in ("baseline", "member") else _seconds(r.train_seconds)
        per_candidate = "-" if r.kind == "member" else _seconds(r.seconds_per_candidate)
        lines.append(_table_row(r.name, st["n"], _num(st["pearson"]), _ci(st, "spearman"), _ci(st, "kendall"), top,
                                f"{_num(st['precision_at_k'], 2)} (k={st['top_k']})", _num(st["top1_accuracy"], 4),
                                vs, given, train, per_candidate))
    for name, kl in s.get("kl", {}).items():
        lines += ["", f"KL analysis (one-shot paper, Figure 6): over all {kl['n']} candidates, {name}'s symmetrized "
                      f"KL to its reference architectures (training images, no labels) against its validation "
                      f"accuracy: Pearson {_num(kl['pearson'])}, Spearman {_num(kl['spearman'])}, Kendall "
                      f"{_num(kl['kendall'])} (negative: lower KL, higher accuracy). Row {name}_kl ranks by -KL."]
    for name, rhos in s.get("members", {}).items():
        if not rhos:
            continue
        lines += ["", f"Proxy seeds: {name} is the mean of {len(rhos)} proxies trained with different seeds "
                      f"(--proxy_ensemble); each alone ranks at Spearman "
                      f"{', '.join(_num(v, 3) for v in rhos)} (mean {_num(float(np.mean(rhos)), 3)}, range "
                      f"{_num(float(np.ptp(rhos)), 3)}): rows {name}_member_<i>, costs in {name}'s row."]
    pairs = s.get("pairs", [])
    if pairs:
        lines += ["", "Between proxies (paired over the same M candidates): Spearman of the first minus the "
                      "second's, 95% bootstrap interval; an interval that holds 0 does not tell the two apart.", ""]
        lines += [f"- {p['a']} - {p['b']}: {_ci({'d': p['difference'], 'd_lo': p['lo'], 'd_hi': p['hi']}, 'd')}"
                  for p in pairs]
    legend = s.get("settings", {})
    if legend:
        lines += ["", "Settings: rows METHOD-<hash> are scores that earlier runs of this study directory left "
                      "under other settings of a method, ranked on this run's ground truth (--noearlier leaves "
                      "them out); the identity flags that differ among a method's rows:", ""]
        for name, flags in legend.items():
            shown = ", ".join(f"--{k}={_flag(v)}" for k, v in flags.items()) or "(no identity flag differs)"
            lines.append(f"- {name}: {shown}")
    lines += ["", "A score that does not beat params is not ranking anything. The ceiling row compares single seeds "
                  "of the ground truth; the ground truth is their mean, more reliable (Spearman-Brown), and no "
                  "score's correlation with it can exceed about the square root of that reliability beyond the "
                  "sampling noise of M candidates.", f"This run of the study took {s['seconds']:.0f} s (cached results are reused, not retrained).", ""]
    return "\n".join(lines)


def fidelity_png(rows, truth: np.ndarray, title: str, ylabel: str) -> bytes:
    """One panel per row with scores: score against the ground truth (seed
    mean, bars: min to max over seeds); a last panel of seed 1 against seed 2."""
    y = truth.mean(axis=1)
    panels = []
    for r in rows:
        if r.error or r.scores is None:
            continue
        st = r.stats
        panels.append({"x": r.scores, "y": y, "ylo": truth.min(axis=1), "yhi": truth.max(axis=1),
                       "xlabel": f"{r.name} score", "title": f"{r.name}: Spearman {_num(st.get('spearman'), 2)}, "
                                                            f"Kendall {_num(st.get('kendall'), 2)}"})
    if truth.shape[1] >= 2:
        panels.append({"x": truth[:, 0], "y": truth[:, 1], "xlabel": "seed 1", "ylabel": "seed 2",
                       "title": "ceiling: seed vs seed"})
    return plots.panels_png(panels, ylabel=ylabel, title=title)


def write(study, rows, truth, truth_cands, picks, method_rows, summary) -> None:
    import tensorflow as tf
    cfg = study.cfgs[0]
    title = (f"Ranking fidelity: {', '.join(study.methods)} on {cfg.dataset}"
             + (f" ({cfg.image_size}x{cfg.image_size})" if cfg.image_size else ""))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(rows, summary))
    io_utils.atomic_write_text(study.path("fidelity.csv"), buf.getvalue())
    md = markdown(rows, summary, title)
    io_utils.atomic_write_text(study.path("fidelity.md"), md)
    # every ground-truth candidate with every score and every seed's accuracy
    buf = io.StringIO()
    scored = [r for r in rows if not r.error and r.scores is not None]
    names = ["id", "index", "stratum", "truth"] + [f"seed_{j + 1}" for j in range(truth.shape[1])]
    names += [r.name for r in scored]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for j, cand in enumerate(truth_cands):
        w.writerow([cand["id"], cand["index"], j + 1, truth[j].mean(), *truth[j], *[r.scores[j] for r in scored]])
    io_utils.atomic_write_text(study.path("fidelity_candidates.csv"), buf.getvalue())
    ylabel = f"stand-alone {summary['truth_metric']} accuracy"
    png = fidelity_png(rows, truth, title, ylabel)
    io_utils.atomic_write_bytes(study.path("fidelity.png"), png)
    images = {"fidelity/scatter": png}
    kl_rows = [r for r in method_rows if r.all_kl is not None]
    if kl_rows:
        kl_png = plots.panels_png(
            [{"x": r.all_scores, "y": r.all_kl, "xlabel": f"{r.name} score (validation accuracy)",
              "ylabel": "symmetrized KL (training images)",
              "title": f"{r.name}: Spearman {_num(summary['kl'][r.name]['spearman'], 2)}"} for r in kl_rows],
            ylabel="symmetrized KL", title=f"KL vs proxy accuracy, {summary['candidates']} candidates")
        io_utils.atomic_write_bytes(study.path("kl.png"), kl_png)
        images["fidelity/kl"] = kl_png
    tb = tf.summary.create_file_writer(study.path("tb"))
    with tb.as_default(step=int(summary["truth_candidates"])):
        for name, data in images.items():
            tf.summary.image(name, tf.image.decode_png(data)[None])
        tf.summary.text("fidelity/table", md)
        for r in rows:
            for key in ("spearman", "kendall", "pearson"):
                value = r.stats.get(key)
                if value is not None and math.isfinite(value):
                    tf.summary.scalar(f"{key}/{r.name}", value)
    tb.close()
