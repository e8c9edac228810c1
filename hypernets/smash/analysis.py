"""SMASH's corrupted-encoding test (Brock et al., ICLR 2018, section 4.2):
does the trained HyperNet read the encoding tensor c, or does it generate
one unconditional set of weights that happens to work for every
architecture?

For each of N sampled architectures the SMASH network runs the
architecture's own structure (``network.network_structure``: the banks it
reads and writes, its convolutions) twice or more: once with the weights the
HyperNet generates from the architecture's true c, and once per corruption
with weights generated from a corrupted c.  Only ``"c"`` of the proxy's
encoding is replaced, so the network computes the same function shape and
only the generated 1x1 kernels differ.  If the HyperNet reads the corrupted
part of c, the true c should score higher (the paper: "SMASH validation
performance is consistently highest when using the correct encoding
tensor").

**Where things sit in c** (appendix B; ``MemoryBankSpace.encode``): an op
fills rows ``0 .. units / base - 1`` and the columns ``OpLayout.column ..
+ OpLayout.columns`` of ``MemoryBankSpace.layout`` with one channel vector.
The channels of that vector (``MemoryBankSpace.channel_map``, the map
``encode`` itself writes through) are ``max_banks`` read channels,
``max_banks`` write channels, then the convolution fields: for a
single-convolution space (SMASHv1) one dilation one-hot of ``max_dilation``
channels; for a 2x2 space (SMASHv2) per convolution slot a one-hot per axis
for the dilation and the kernel size, one for the groups and an "active"
channel.

**Corruptions** (each a permutation of fields of c, so the corrupted c
holds the same multiset of field values; seeded by a ``numpy`` Generator):

* ``shuffle_dilations``: the dilation fields (SMASHv1: the dilation one-hot;
  SMASHv2: both axes' one-hots of a slot, moved together) permuted among all
  the architecture's active convolutions, each landing in the target
  convolution's own slot channels; everything else of c is kept.
* ``shuffle_reads_writes``: each op's memory-bank pattern (its read and
  write channels, moved together) permuted among the ops of its block.

A permutation is drawn uniformly among those that change c (rejection), so a
scored corruption always differs from the true c.  A corrupted c need not
describe a valid architecture (a dilation moved onto a larger kernel may
exceed ``max_extent``; a bank pattern moved onto an op may not match its
read width): it only has to be c-shaped for the HyperNet.  When no permutation can
change c (every convolution has the same dilation; every block's ops share
one pattern or a block has one op) the corruption is a no-op: it is marked
``changed: false`` with a note, not scored, and left out of the summary's
statistics (the summary counts these architectures as ``skipped``).

A third corruption, the c of an unrelated random architecture, is
deliberately absent: its ops occupy other cells of c than the true ops
(other widths, other read widths), so it changes where c is empty as well as
what c says, and an op would get weights generated from cells that describe
parts of other ops or nothing (where no filled cell lies within the
HyperNet's receptive field its bias-free output is exactly zero, and the
simplified WeightNorm divides by zero).  The two permutations keep every
op's cells and change only what they say.

**Summary** per corruption, over the architectures it changed: mean drop
(true score minus corrupted score), a percentile-bootstrap 95% interval of
the mean over architectures (the validation examples are fixed; the
interval is over architectures only), the mean absolute drop (whether the
corruption moves scores at all), the fractions of architectures where the
true c scored higher, the same or lower, and a verdict.

``analyze_model_dir`` does it all for a trained SMASH run directory and
writes ``encoding_analysis.json`` and ``encoding_analysis.png``
(``experiments/smash_encoding.py`` is its command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from hypernets.smash.space import BankArchitecture, MemoryBankSpace, OpLayout

#: File names written into the output directory.
JSON_NAME = "encoding_analysis.json"
PNG_NAME = "encoding_analysis.png"
#: Bootstrap resamples of the mean drop.
BOOTSTRAP_RESAMPLES = 10000
#: Permutations drawn before falling back to a swap of two differing fields
#: (a uniform permutation leaves c unchanged with probability at most 1/2
#: once two fields differ, so the fallback is practically never reached).
MAX_DRAWS = 100


class AnalysisError(ValueError):
    """A model directory the analysis cannot use (one line, for the binary)."""


# -- where things sit in c ------------------------------------------------------
def op_cells(space: MemoryBankSpace, lay: OpLayout) -> Tuple[slice, slice]:
    """(rows, columns) of c that op ``lay`` fills: rows ``0 .. units / base
    - 1``, its columns of ``space.layout``."""
    return slice(0, lay.units // space.base), slice(lay.column, lay.column + lay.columns)


# -- corruptions ------------------------------------------------------------------
@dataclasses.dataclass
class Corruption:
    """A corrupted c and what happened: ``changed`` (False: a no-op, see
    ``note``), how many fields were permuted and how many took another
    value."""

    c: np.ndarray
    changed: bool
    fields: int
    moved: int
    note: str = ""


def _draw_permutation(values: Sequence[bytes], rng: np.random.Generator) -> np.ndarray:
    """A uniform permutation of ``values`` that moves at least one value to a
    position holding another (``values`` must not all be equal)."""
    n = len(values)
    for _ in range(MAX_DRAWS):
        perm = rng.permutation(n)
        if any(values[int(perm[i])] != values[i] for i in range(n)):
            return perm
    i = 0
    j = next(t for t in range(n) if values[t] != values[0])
    perm = np.arange(n)
    perm[i], perm[j] = j, i
    return perm


def _permute_fields(c: np.ndarray, targets: List[Tuple[Tuple[slice, slice], slice]],
                    groups: List[List[int]], rng: np.random.Generator, what: str) -> Corruption:
    """Permute field values of c: ``targets[t]`` is (cells, channels) of field
    ``t``; the fields of each of ``groups`` (lists of target indices) are
    permuted among themselves (each group whose values differ gets a
    permutation that changes it)."""
    out = c.copy()
    values = [c[cells[0].start, cells[1].start, ch].copy() for cells, ch in targets]
    keys = [v.tobytes() for v in values]
    moved, eligible = 0, 0
    for group in groups:
        if len({keys[t] for t in group}) < 2:
            continue
        eligible += 1
        perm = _draw_permutation([keys[t] for t in group], rng)
        for i, t in enumerate(group):
            src = group[int(perm[i])]
            (rows, cols), ch = targets[t]
            out[rows, cols, ch] = values[src]
            moved += keys[src] != keys[t]
    if not eligible:
        return Corruption(out, False, len(targets), 0, f"no-op: {what}")
    return Corruption(out, True, len(targets), moved)


def shuffle_dilations(space: MemoryBankSpace, arch: BankArchitecture, rng: np.random.Generator) -> Corruption:
    """c of ``arch`` with the dilation fields of its active convolutions
    permuted among all of them (module docstring); the rest of c is kept.
    A no-op when every convolution has the same dilation."""
    cmap = space.channel_map()
    c = space.encode(arch)["c"]
    targets = []
    for lay in space.layout(arch):
        op = arch.blocks[lay.block].ops[lay.op]
        for conv, slot in zip(op.convs, cmap.slots):
            if conv is not None:
                targets.append((op_cells(space, lay), slot.dilation))
    dilations = sorted({conv.dilation for blk in arch.blocks for op in blk.ops for conv in op.convs
                        if conv is not None})
    what = (f"the architecture's one convolution has dilation {list(dilations[0])}" if len(targets) == 1
            else f"all {len(targets)} convolutions have dilation {list(dilations[0])}")   # (used if a no-op)
    return _permute_fields(c, targets, [list(range(len(targets)))], rng, what)


def shuffle_reads_writes(space: MemoryBankSpace, arch: BankArchitecture, rng: np.random.Generator) -> Corruption:
    """c of ``arch`` with each op's read-and-write bank pattern permuted among
    the ops of its block (module docstring); the rest of c is kept.  A no-op
    when no block has two ops with different patterns."""
    cmap = space.channel_map()
    c = space.encode(arch)["c"]
    banks = slice(cmap.reads.start, cmap.writes.stop)
    if cmap.writes.start != cmap.reads.stop:
        raise RuntimeError("analysis: the read and write channels of c are not adjacent")
    targets, groups = [], []
    for lay in space.layout(arch):
        if lay.op == 0:
            groups.append([])
        groups[-1].append(len(targets))
        targets.append((op_cells(space, lay), banks))
    ops = [len(blk.ops) for blk in arch.blocks]
    what = (f"no block has two ops with different bank patterns (ops per block: {ops})" if max(ops) > 1
            else f"every block has one op (ops per block: {ops})")
    return _permute_fields(c, targets, groups, rng, what)


#: The corruptions by name, and the part of c each one corrupts (for the verdicts).
CORRUPTIONS: Dict[str, Callable[..., Corruption]] = {
    "shuffle_dilations": shuffle_dilations,
    "shuffle_reads_writes": shuffle_reads_writes,
}
PARTS = {"shuffle_dilations": "the dilations", "shuffle_reads_writes": "the read/write bank patterns"}


# -- the analysis -------------------------------------------------------------------
def sample_architectures(space: MemoryBankSpace, n: int, seed: int) -> List[BankArchitecture]:
    """``n`` architectures, number ``i`` drawn by ``space.sample`` with the
    generator ``default_rng([seed, i, 0])`` (``SearchSpace.sample_at``);
    small spaces may repeat one."""
    if n < 1:
        raise ValueError(f"--num_architectures must be positive, got {n}")
    return [space.sample_at(seed, i) for i in range(n)]


def corruption_rng(seed: int, index: int, name: str) -> np.random.Generator:
    """The generator of corruption ``name`` on architecture ``index``: it does
    not depend on which other corruptions run."""
    return np.random.default_rng([int(seed), int(index), 1, zlib.crc32(name.encode())])


def bootstrap_ci(values: Sequence[float], rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = 0.95) -> Tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (``resamples``
    resamples of ``len(values)`` with replacement)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def verdict(name: str, drop: float, ci: Tuple[float, float], n: int) -> str:
    """One line: whether the HyperNet reads the part of c that ``name`` corrupts."""
    part = PARTS.get(name, name)
    if n == 0:
        return f"{name}: not measured: the corruption changed c for none of the architectures"
    stats = f"mean drop {drop:+.4f}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] over {n} architectures"
    if ci[0] > 0:
        return f"{name}: the HyperNet reads c ({part}): {stats}, above 0"
    if ci[1] < 0:
        return (f"{name}: no evidence that the HyperNet reads {part} of c: {stats}, below 0 (the corrupted c "
                f"scores higher)")
    return f"{name}: no evidence that the HyperNet reads {part} of c: {stats}, includes 0"


def summarize(records: Sequence[Mapping[str, Any]], names: Sequence[str], seed: int) -> Dict[str, Any]:
    """Per corruption, over the architectures it changed: counts, mean
    scores, mean drop, its bootstrap 95% CI, the mean absolute drop (how
    much the corruption moves a score at all, either way), the fractions
    where the true c scored higher / the same / lower, and the verdict; plus
    ``all``: the fraction of architectures where the true c scored strictly
    highest among all its changed corruptions."""
    out: Dict[str, Any] = {}
    for k, name in enumerate(names):
        scored = [r for r in records if r["corruptions"][name]["changed"]]
        true = np.array([r["true_score"] for r in scored], np.float64)
        bad = np.array([r["corruptions"][name]["score"] for r in scored], np.float64)
        drop = true - bad
        n = len(scored)
        mean = float(drop.mean()) if n else float("nan")
        ci = bootstrap_ci(drop, np.random.default_rng([int(seed), 2, k]))
        out[name] = {
            "part": PARTS.get(name, name), "architectures": n, "skipped": len(records) - n,
            "mean_true_score": float(true.mean()) if n else None,
            "mean_corrupted_score": float(bad.mean()) if n else None,
            "mean_drop": mean if n else None, "ci95": [ci[0], ci[1]] if n else None,
            "mean_abs_drop": float(np.abs(drop).mean()) if n else None,
            "frac_true_highest": float(np.mean(drop > 0)) if n else None,
            "frac_tied": float(np.mean(drop == 0)) if n else None,
            "frac_true_lower": float(np.mean(drop < 0)) if n else None,
            "verdict": verdict(name, mean, ci, n)}
    any_changed = [r for r in records if any(r["corruptions"][nm]["changed"] for nm in names)]
    best = [all(r["true_score"] > r["corruptions"][nm]["score"] for nm in names if r["corruptions"][nm]["changed"])
            for r in any_changed]
    out["all"] = {"architectures": len(any_changed),
                  "frac_true_highest": float(np.mean(best)) if best else None}
    return out


def analyze(proxy, scorer, architectures: Sequence[BankArchitecture], *, seed: int,
            corruptions: Sequence[str] = tuple(CORRUPTIONS),
            progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Score every architecture with its true c and with each corruption.

    ``proxy``: a restored ``SmashProxy``; ``scorer``: a prepared
    ``CandidateScorer`` of it (``SearchRun.make_scorer``).  Every encoding is
    ``proxy.encode(arch)`` with only ``"c"`` replaced.  Encodings are scored
    ``candidates_per_pass`` at a time; ``progress(done, total)`` is called
    after each pass.  Returns ``{"records": [...], "summary": {...}}``
    (``summarize``)."""
    unknown = [n for n in corruptions if n not in CORRUPTIONS]
    if unknown or not corruptions:
        raise ValueError(f"unknown corruptions {unknown}; choose from {', '.join(CORRUPTIONS)}")
    space = proxy.space
    records, jobs = [], []          # jobs: (record, corruption name or None, encoding)
    for i, arch in enumerate(architectures):
        enc = proxy.encode(arch)
        if not np.array_equal(enc["c"], space.encode(arch)["c"]):
            raise RuntimeError(f"{type(proxy).__name__}.encode's c is not MemoryBankSpace.encode's")
        rec = {"index": i, "id": space.arch_id(arch), "description": space.describe(arch),
               "architecture": space.to_json(arch), "true_score": None, "corruptions": {}}
        jobs.append((rec, None, enc))
        for name in corruptions:
            bad = CORRUPTIONS[name](space, arch, corruption_rng(seed, i, name))
            rec["corruptions"][name] = {"changed": bad.changed, "fields": bad.fields, "moved": bad.moved,
                                        "score": None, **({"note": bad.note} if bad.note else {})}
            if bad.changed:
                jobs.append((rec, name, {**enc, "c": bad.c}))
        records.append(rec)
    k = scorer.cfg.candidates_per_pass
    for s in range(0, len(jobs), k):
        chunk = jobs[s:s + k]
        for (rec, name, _), score in zip(chunk, scorer.score_encodings([e for _, _, e in chunk])):
            if name is None:
                rec["true_score"] = score["score"]
            else:
                rec["corruptions"][name]["score"] = score["score"]
        if progress is not None:
            progress(min(s + k, len(jobs)), len(jobs))
    for rec in records:
        for name in corruptions:
            cr = rec["corruptions"][name]
            cr["drop"] = None if cr["score"] is None else rec["true_score"] - cr["score"]
    return {"records": records, "summary": summarize(records, list(corruptions), seed)}


# -- outputs ------------------------------------------------------------------------
def encoding_png(result: Mapping[str, Any], title: str = "") -> bytes:
    """One panel per corruption: each architecture's score with the true c
    (x) against its score with the corrupted c (y), and the diagonal (points
    below it: the true c scored higher).  The PNG conventions of
    ``oneshot_tf.plots`` (Agg, 90 dpi)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result["summary"] if n != "all"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.0), squeeze=False)
    records = result["records"]
    for ax, name in zip(axes.flat, names):
        pts = [(r["true_score"], r["corruptions"][name]["score"]) for r in records
               if r["corruptions"][name]["changed"]]
        s = result["summary"][name]
        everything = [r["true_score"] for r in records] + [y for _, y in pts]
        lo, hi = min(everything), max(everything)
        pad = max(0.02, 0.05 * (hi - lo))
        lim = (lo - pad, hi + pad)
        ax.plot(lim, lim, color="0.5", linewidth=1, linestyle="--", label="y = x")
        if pts:
            x, y = np.array(pts).T
            ax.scatter(x, y, s=16, alpha=0.6, label=f"{len(pts)} architectures")
        ax.set(xlim=lim, ylim=lim, xlabel="SMASH score, true c", ylabel=f"SMASH score, c after {name}")
        if s["architectures"]:
            sub = (f"drop {s['mean_drop']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}], "
                   f"true higher {s['frac_true_highest']:.0%}")
        else:
            sub = "no architecture changed"
        if s["skipped"]:
            sub += f"; {s['skipped']} no-op"
        ax.set_title(f"{name}\n{sub}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_aspect("equal")
    from oneshot_tf.plots import figure_png
    return figure_png(fig, title)


def write_outputs(output_dir: str, result: Mapping[str, Any], settings: Mapping[str, Any],
                  title: str = "") -> Dict[str, str]:
    """Write ``encoding_analysis.json`` (settings, records, summary) and
    ``encoding_analysis.png`` into ``output_dir`` (local or gs://), each
    atomically; returns their paths."""
    from oneshot_tf import io_utils
    paths = {"json": io_utils.join(output_dir, JSON_NAME), "png": io_utils.join(output_dir, PNG_NAME)}
    io_utils.write_json(paths["json"], {"settings": dict(settings), "summary": result["summary"],
                                        "records": result["records"]})
    io_utils.atomic_write_bytes(paths["png"], encoding_png(result, title))
    return paths


def read_smash_config(model_dir: str) -> Dict[str, Any]:
    """The stored config.json of a SMASH run directory; ``AnalysisError``
    with a one-line reason when there is none or it is another method's.
    A local directory is read without TensorFlow (so the binary refuses a
    wrong directory before loading it); other file systems through
    ``tf.io.gfile``."""
    path = os.path.join(model_dir, "config.json")
    if "://" in model_dir:
        import tensorflow as tf
        exists, opener = tf.io.gfile.exists, tf.io.gfile.GFile
    else:
        exists, opener = os.path.exists, open
    if not exists(path):
        raise AnalysisError(f"--model_dir={model_dir} is not a run directory (no config.json); train one with "
                            f"python -m experiments.train --method=smash --model_dir=DIR")
    try:
        with opener(path, "r") as f:
            stored = json.loads(f.read())
        method, flags = stored.get("method"), stored["flags"]
        if not isinstance(flags, dict):
            raise TypeError("flags is not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AnalysisError(f"{path} is not a run's config ({type(e).__name__}: {e})") from None
    if method != "smash":
        raise AnalysisError(f"--model_dir={model_dir} holds a {method!r} run, not a SMASH run (--method=smash)")
    return stored


def open_model_dir(model_dir: str, *, verbose: bool = False):
    """The ``SearchRun`` of a trained SMASH run directory (its stored flags),
    its proxy restored; ``AnalysisError`` or ``pipeline.ProxyNotTrainedError``
    with a one-line reason otherwise."""
    from oneshot_tf import config as config_lib
    stored = read_smash_config(model_dir)
    cfg = config_lib.RunConfig.from_dict(stored["flags"])
    from oneshot_tf.distribute import configure_runtime
    configure_runtime(cfg.intra_op_threads, cfg.deterministic)  # before TensorFlow starts, as the binaries do
    from oneshot_tf import pipeline
    run = pipeline.SearchRun(cfg, model_dir, verbose=verbose)
    run.restore_proxy()
    return run


def analyze_model_dir(model_dir: str, *, num_architectures: int = 50, seed: int = 0,
                      output_dir: Optional[str] = None, corruptions: Sequence[str] = tuple(CORRUPTIONS),
                      log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Restore the SMASH run in ``model_dir``, analyse ``num_architectures``
    architectures sampled with ``seed``, write the outputs to ``output_dir``
    (default ``model_dir/encoding_analysis``).  Returns the result with the
    ``settings`` and the output ``paths``; ``log`` receives progress lines."""
    from oneshot_tf import io_utils
    if num_architectures < 1:
        raise AnalysisError(f"--num_architectures must be positive, got {num_architectures}")
    if seed < 0:
        raise AnalysisError(f"--seed must be >= 0, got {seed}")
    output_dir = output_dir or io_utils.join(model_dir, "encoding_analysis")
    t0 = time.time()
    run = open_model_dir(model_dir)
    log(f"restored the SMASH proxy of {model_dir} ({run.cfg.train_steps} steps) in {time.time() - t0:.1f}s")
    scorer = run.make_scorer()
    n_val = len(run.dataset.x_val)
    n_val = min(run.cfg.score_examples, n_val) if run.cfg.score_examples else n_val   # (as the scorer counts)
    archs = sample_architectures(run.space, num_architectures, seed)
    log(f"scoring {len(archs)} architectures with their true c and {len(corruptions)} corruptions "
        f"({', '.join(corruptions)}) on {n_val} validation examples")
    t1 = time.time()
    result = analyze(run.proxy, scorer, archs, seed=seed, corruptions=corruptions,
                     progress=lambda done, total: log(f"  {done}/{total} encodings scored "
                                                     f"({time.time() - t1:.0f}s)"))
    settings = {"model_dir": model_dir, "num_architectures": num_architectures, "seed": seed,
                "distinct_architectures": len({r["id"] for r in result["records"]}),
                "corruptions": list(corruptions), "dataset": run.cfg.dataset, "train_steps": run.cfg.train_steps,
                "validation_examples": int(n_val),
                "candidates_per_pass": scorer.cfg.candidates_per_pass, "group_size": scorer.cfg.group_size,
                "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "search_space": run.space.get_config(),
                "channel_map": run.space.channel_map().to_json(), "seconds": round(time.time() - t0, 1)}
    paths = write_outputs(output_dir, result, settings,
                          title=f"SMASH on {run.cfg.dataset}: true vs corrupted c ({num_architectures} architectures)")
    return {**result, "settings": settings, "paths": paths}
