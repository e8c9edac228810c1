"""Speed of the one-shot machinery, measured side by side in one run.

    python -m benchmarks.benchmark [--image_size=32 --filters=8 --num_cells=3 ...]

(a) one-shot training throughput (examples/s) / throughput of the equivalent
    all-on stand-alone model (same ops, ordinary BN), same step code;
(b) candidates scored per second by the masked evaluator, with one and with
    K candidates per pass (and K per pass through the proxy interface's
    generic tiled evaluator, per-ghost masks), / candidates per second when
    building and evaluating a stand-alone model per candidate;
(c) seconds to score a candidate / one compiled forward pass of that
    candidate's own stand-alone model over the same examples (averaged over
    ``--baseline_candidates`` candidates; scored one per pass, and all in one).

The stand-alone baselines of (a) and (c) are the models the library builds
(batch norm with TensorFlow's fused kernel, ``layers.FusedBatchNormalization``);
the ``*_keras_bn`` rows measure the same models with Keras' own
BatchNormalization, the baseline of the runs before it, side by side.

Ratios are what to read: both sides run in the same process on the same
machine, interleaved, best of several repeats.

``--intra_op_threads`` (default 1) is TensorFlow's intra-op thread pool for
the whole process, both sides alike.  On a 2-core CPU host the default pool
(one thread per core) splits every small kernel of the scorer over two
threads, and the hand-off costs more than the kernel: a ghost batch norm on
32 examples took ~190-300 us with two intra-op threads and ~32 us with one,
and the scorer ran about twice as fast with one (candidates then run two at
a time on the inter-op threads, ``OneShotModel.candidates_logits``).  0 keeps
TensorFlow's default.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
import types

import numpy as np

from benchmarks.report import print_results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults: the network of the quick preset (digits at 16x16, 3 cells, 2 stages, F=8).
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--num_cells", type=int, default=3)
    p.add_argument("--num_stages", type=int, default=2)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--ghost_batch_size", type=int, default=32)
    p.add_argument("--train_steps", type=int, default=15, help="timed steps per repeat")
    p.add_argument("--candidates", type=int, default=16, help="candidates per scoring measurement")
    p.add_argument("--candidates_per_pass", type=int, default=8)
    p.add_argument("--eval_examples", type=int, default=256)
    p.add_argument("--baseline_candidates", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                   help="(d): the one-shot training step and the scorer with and without XLA")
    p.add_argument("--intra_op_threads", type=int, default=1,
                   help="TensorFlow's intra-op threads for the process (0: TensorFlow's default, one per core)")
    p.add_argument("--inter_op_threads", type=int, default=0,
                   help="TensorFlow's inter-op threads for the process (0: TensorFlow's default)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    # before TensorFlow's runtime starts (the first op)
    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)

    from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
    from oneshot_tf.methods.oneshot.models import transfer_oneshot_weights
    from oneshot_tf.methods.oneshot.proxy import OneShotProxy
    from oneshot_tf.proxy import Proxy
    from oneshot_tf.retrain import StandaloneTask
    from oneshot_tf.scoring import CandidateScorer, ScoreConfig
    from oneshot_tf.search_space import StandaloneOptions

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (args.image_size, args.image_size, args.channels)
    classes = 10
    space = CellSearchSpace(num_cells=args.num_cells, num_stages=args.num_stages, filters=args.filters)
    x = rng.integers(0, 256, (args.batch_size,) + shape).astype(np.uint8)
    y = rng.integers(0, classes, args.batch_size).astype(np.int64)
    xt, yt = tf.constant(x), tf.constant(y)

    def train_fn(task, progress=0.0, jit_compile=False):
        task.build()
        opt = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
        variables = task.trainable_variables
        opt.build(variables)
        progress = tf.constant(progress)

        @tf.function(jit_compile=jit_compile)
        def step(images, labels):
            with tf.GradientTape() as tape:
                loss, _ = task.loss(images, labels, progress=progress, seed=tf.constant([1, 2]),
                                    global_batch_size=args.batch_size, num_replicas=1)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        step(xt, yt).numpy()
        return lambda: step(xt, yt)

    def rate(fn, n):
        fn().numpy() if hasattr(fn(), "numpy") else None
        t = time.perf_counter()
        out = None
        for _ in range(n):
            out = fn()
        if hasattr(out, "numpy"):
            out.numpy()
        return n / (time.perf_counter() - t)

    results = {"machine": platform.processor() or platform.machine(), "tensorflow": tf.__version__,
               "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
               "config": vars(args)}

    # (a) training throughput ------------------------------------------------
    # The one-shot step at three points of the path-dropout schedule: at 0
    # every path is on (the same work as the all-on model); later, dropped
    # paths are skipped.  The schedule average is the harmonic mean (equal
    # numbers of steps at each point).
    proxy = OneShotProxy(space, input_shape=shape, num_classes=classes, ghost_batch_size=args.ghost_batch_size)
    points = (0.0, 0.5, 1.0)
    oneshot_steps = {p: train_fn(proxy, p) for p in points}
    # The stand-alone baselines as the library builds them (batch norm with
    # the fused kernel), and, for comparison with earlier runs, with Keras'
    # own BatchNormalization (``_keras_bn``).
    bn_options = {"": StandaloneOptions(), "_keras_bn": StandaloneOptions(fused_bn=False)}
    allon_steps = {k: train_fn(StandaloneTask(lambda o=o: space.build_model(
        space.all_on(), input_shape=shape, num_classes=classes, validate=False, options=o)))
        for k, o in bn_options.items()}
    a_one, a_all = {p: [] for p in points}, {k: [] for k in bn_options}
    for _ in range(args.repeats):
        for p in points:
            a_one[p].append(rate(oneshot_steps[p], args.train_steps) * args.batch_size)
        for k, step in allon_steps.items():
            a_all[k].append(rate(step, args.train_steps) * args.batch_size)
    for p in points:
        results[f"a_oneshot_examples_per_s_at_progress_{p}"] = max(a_one[p])
    schedule = len(points) / sum(1.0 / max(a_one[p]) for p in points)
    for k in bn_options:
        results[f"a_allon{k}_examples_per_s"] = max(a_all[k])
    for k in bn_options:
        results[f"a_ratio_all_paths_on{k}"] = max(a_one[0.0]) / max(a_all[k])
        results[f"a_ratio_schedule_average{k}"] = schedule / max(a_all[k])

    # (b) candidates per second ---------------------------------------------
    xv = rng.integers(0, 256, (args.eval_examples,) + shape).astype(np.uint8)
    yv = rng.integers(0, classes, args.eval_examples).astype(np.int64)
    archs = space.sample_unique(args.candidates, seed=3)
    encs = [space.encode(a) for a in archs]

    # The proxy interface's generic evaluator on the same model: examples
    # tiled, one ghost batch per (candidate, group), per-ghost masks (gathered
    # and scattered ops) instead of OneShotProxy's loop over candidates.
    tiled = copy.copy(proxy)
    tiled.candidates_logits = types.MethodType(Proxy.candidates_logits, tiled)

    def scorer_rate(k, one_group=False, scoring_proxy=proxy):
        # one_group: every pass holds one group of examples (the K candidates'
        # ghost batches only); otherwise passes hold several groups.
        extra = {"pass_examples": k * args.ghost_batch_size} if one_group else {}
        sc = CandidateScorer(scoring_proxy, ScoreConfig(candidates_per_pass=k, group_size=args.ghost_batch_size,
                                                kl_examples=0, verbose=False, **extra)).prepare(xv, yv)
        sc.score_encodings(encs[:k])  # trace
        t = time.perf_counter()
        for s in range(0, len(encs), k):
            sc.score_encodings(encs[s:s + k])
        return len(encs) / (time.perf_counter() - t)

    def baseline_rate():
        t = time.perf_counter()
        for a in archs[: args.baseline_candidates]:
            m = space.build_model(a, input_shape=shape, num_classes=classes)
            transfer_oneshot_weights(proxy.model, m, a)
            fwd = tf.function(lambda im: m(im, training=True))
            correct = 0
            for i in range(0, args.eval_examples - args.ghost_batch_size + 1, args.ghost_batch_size):
                logits = fwd(tf.constant(xv[i:i + args.ghost_batch_size]))
                correct += int(np.sum(np.argmax(logits, -1) == yv[i:i + args.ghost_batch_size]))
        return args.baseline_candidates / (time.perf_counter() - t)

    b11, b1, bk, bt, bb = [], [], [], [], []
    for _ in range(args.repeats):
        b11.append(scorer_rate(1, one_group=True))
        b1.append(scorer_rate(1))
        bk.append(scorer_rate(args.candidates_per_pass))
        bt.append(scorer_rate(args.candidates_per_pass, scoring_proxy=tiled))
        bb.append(baseline_rate())
    kp = args.candidates_per_pass
    results["b_candidates_per_s_1_per_pass_1_group"] = max(b11)
    results["b_candidates_per_s_1_per_pass"] = max(b1)
    results[f"b_candidates_per_s_{kp}_per_pass"] = max(bk)
    results[f"b_candidates_per_s_{kp}_per_pass_tiled"] = max(bt)
    results["b_candidates_per_s_standalone_build"] = max(bb)
    results["b_ratio_1_per_pass_1_group"] = max(b11) / max(bb)
    results["b_ratio_1_per_pass"] = max(b1) / max(bb)
    results[f"b_ratio_{kp}_per_pass"] = max(bk) / max(bb)
    results[f"b_ratio_{kp}_per_pass_tiled"] = max(bt) / max(bb)

    # (c) scoring time vs the candidates' own compiled forward passes ---------
    # Over the same n candidates and examples: one per pass, and all n in one pass.
    n = args.baseline_candidates
    chunks = [tf.constant(xv[i:i + args.ghost_batch_size])
              for i in range(0, args.eval_examples - args.ghost_batch_size + 1, args.ghost_batch_size)]
    forwards = {k: [] for k in bn_options}
    for k, o in bn_options.items():
        for a in archs[:n]:
            m = space.build_model(a, input_shape=shape, num_classes=classes, options=o)
            transfer_oneshot_weights(proxy.model, m, a)
            fwd = tf.function(lambda im, m=m: m(im, training=True))
            fwd(chunks[0])
            forwards[k].append(fwd)
    scorers = {k: CandidateScorer(proxy, ScoreConfig(candidates_per_pass=k, group_size=args.ghost_batch_size,
                                                     kl_examples=0, verbose=False)).prepare(xv, yv)
               for k in (1, n)}
    for sc in scorers.values():
        sc.score_encodings(encs[:sc.cfg.candidates_per_pass])
    c_one, c_all, c_fwd = [], [], {k: [] for k in bn_options}
    for _ in range(args.repeats):
        t = time.perf_counter()
        for e in encs[:n]:
            scorers[1].score_encodings([e])
        c_one.append(time.perf_counter() - t)
        t = time.perf_counter()
        scorers[n].score_encodings(encs[:n])
        c_all.append(time.perf_counter() - t)
        for k, fwds in forwards.items():
            t = time.perf_counter()
            for fwd in fwds:
                for c in chunks:
                    fwd(c).numpy()
            c_fwd[k].append(time.perf_counter() - t)
    results["c_seconds_per_candidate_1_per_pass"] = min(c_one) / n
    results[f"c_seconds_per_candidate_{n}_per_pass"] = min(c_all) / n
    for k in bn_options:
        results[f"c_seconds_per_candidate_standalone_forward{k}"] = min(c_fwd[k]) / n
    for k in bn_options:
        results[f"c_ratio_1_per_pass{k}"] = min(c_one) / min(c_fwd[k])
        results[f"c_ratio_{n}_per_pass{k}"] = min(c_all) / min(c_fwd[k])

    # (d) XLA on this device ----------------------------------------------------
    # The one-shot training step (mid-schedule) and the scorer, each with the
    # model it runs under --jit_compile (static shapes, tf.cond per op) and
    # without (the gather path), compile time excluded: the measurement behind
    # the per-device default of --jit_compile.
    if args.xla:
        static = OneShotProxy(space, input_shape=shape, num_classes=classes,
                              ghost_batch_size=args.ghost_batch_size, static_shapes=True)
        t = time.perf_counter()
        xla_step = train_fn(static, 0.5, jit_compile=True)
        results["d_xla_train_compile_seconds"] = time.perf_counter() - t
        d_plain = [rate(oneshot_steps[0.5], args.train_steps) * args.batch_size for _ in range(args.repeats)]
        d_xla = [rate(xla_step, 3) * args.batch_size]  # 3 steps: XLA on CPU is slow enough for one sample
        results["d_train_examples_per_s_plain"] = max(d_plain)
        results["d_train_examples_per_s_xla"] = max(d_xla)
        results["d_train_ratio_xla_over_plain"] = max(d_xla) / max(d_plain)
        k = args.candidates_per_pass
        xla_scorer = CandidateScorer(static, ScoreConfig(candidates_per_pass=k, group_size=args.ghost_batch_size,
                                                         kl_examples=0, jit_compile=True,
                                                         verbose=False)).prepare(xv, yv)
        xla_scorer.score_encodings(encs[:k])
        t = time.perf_counter()
        for s in range(0, len(encs), k):
            xla_scorer.score_encodings(encs[s:s + k])
        results["d_score_candidates_per_s_xla"] = len(encs) / (time.perf_counter() - t)
        results["d_score_ratio_xla_over_plain"] = results["d_score_candidates_per_s_xla"] / max(bk)

    return print_results(results, args.json)


if __name__ == "__main__":
    main()
