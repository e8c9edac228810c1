"""Speed of the GHN proxy against stand-alone models, side by side in one run.

    python -m benchmarks.ghn_speed [--image_size=16 --filters=8 --num_cells=3 ...]

Defaults: the GHN quick preset's network (digits at 16x16, 3 blocks of 5
nodes in 2 stages, F=8, the GHN trained on blocks of 3 nodes, groups of 32);
``--space=cell`` the one-shot quick preset's cell space (3 cells of 4 blocks).

(b) candidates scored per second by ``CandidateScorer`` with the GHN proxy
    (one GHN pass generates the weights of K candidates, each run by the
    shared executor in one compiled pass) / candidates per second when a
    stand-alone Keras model is built per candidate and evaluated (a new
    model, a new trace).  The baseline does not even copy generated weights
    into its models (that would cost it more), so the ratio is a lower bound.
    Also measured: the same stand-alone models evaluated after they were
    built and traced (``prebuilt``): ``b_ratio`` is the product of what not
    rebuilding gains (prebuilt over build) and what the GHN's batched
    execution gains over evaluating each prebuilt model (ghn over prebuilt);
    the GHN still runs every candidate's network.
(c) seconds per training step of the GHN (draw an architecture, generate
    every weight, run the candidate, back-propagate into the GHN, Adam) /
    a training step of that candidate's own stand-alone model (same batch,
    Adam), averaged over ``--train_candidates`` architectures.

Ratios are what to read: both sides run in the same process, interleaved,
best of ``--repeats``.  ``--intra_op_threads`` as in ``benchmarks.benchmark``.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from benchmarks.report import print_results
from benchmarks.steps import adam_step, scorer_rate, scoring_ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="dag", choices=("dag", "cell"))
    p.add_argument("--num_nodes", type=int, default=5, help="--space=dag: nodes per block of the candidates")
    p.add_argument("--train_nodes", type=int, default=3, help="--space=dag: nodes per block the GHN trains on")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--num_cells", type=int, default=3)
    p.add_argument("--num_stages", type=int, default=2)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument("--candidates", type=int, default=16, help="candidates per scoring measurement")
    p.add_argument("--candidates_per_pass", type=int, default=8)
    p.add_argument("--eval_examples", type=int, default=320)
    p.add_argument("--baseline_candidates", type=int, default=4)
    p.add_argument("--train_steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--train_candidates", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--intra_op_threads", type=int, default=1)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    from hypernets.ghn import GHNSettings
    from hypernets.ghn.proxy import GHNProxy
    from oneshot_tf.retrain import StandaloneTask

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (args.image_size, args.image_size, 1)
    classes = 10
    settings = GHNSettings(space=args.space, num_cells=args.num_cells, num_stages=args.num_stages,
                           filters=args.filters, num_nodes=args.num_nodes, train_nodes=args.train_nodes)
    settings.check()
    space = settings.search_space()
    train_space = space.with_nodes(args.train_nodes) if args.space == "dag" else None
    proxy = GHNProxy(space, input_shape=shape, num_classes=classes, group_size=args.group_size,
                     train_space=train_space)
    proxy.build()
    results = {"machine": platform.processor() or platform.machine(), "tensorflow": tf.__version__,
               "space": args.space,
               "graph_slots": proxy.graph.num_nodes, "config": vars(args)}

    # (b) candidates per second -------------------------------------------------
    xv = rng.integers(0, 256, (args.eval_examples,) + shape).astype(np.uint8)
    yv = rng.integers(0, classes, args.eval_examples).astype(np.int64)
    archs = space.sample_unique(args.candidates, seed=3)
    encs = [proxy.encode(a) for a in archs]
    k = args.candidates_per_pass
    _, rate_fn = scorer_rate(proxy, encs, xv, yv, candidates_per_pass=k, group_size=args.group_size)

    def baseline_rate():
        t = time.perf_counter()
        for a in archs[: args.baseline_candidates]:
            m = space.build_model(a, input_shape=shape, num_classes=classes)
            fwd = tf.function(lambda im: m(im, training=True))  # batch statistics per group, as the GHN scores
            correct = 0
            for i in range(0, args.eval_examples - args.group_size + 1, args.group_size):
                logits = fwd(tf.constant(xv[i:i + args.group_size]))
                correct += int(np.sum(np.argmax(logits, -1) == yv[i:i + args.group_size]))
        return args.baseline_candidates / (time.perf_counter() - t)

    # The baseline's evaluation alone (models built and traced beforehand):
    # what skipping the rebuild alone gains; the GHN must still run every
    # candidate's network.
    built = []
    for a in archs[: args.baseline_candidates]:
        m = space.build_model(a, input_shape=shape, num_classes=classes)
        fwd = tf.function(lambda im, m=m: m(im, training=True))
        fwd(tf.constant(xv[: args.group_size]))
        built.append(fwd)

    def eval_only_rate():
        t = time.perf_counter()
        for fwd in built:
            for i in range(0, args.eval_examples - args.group_size + 1, args.group_size):
                fwd(tf.constant(xv[i:i + args.group_size])).numpy()
        return len(built) / (time.perf_counter() - t)

    results.update(scoring_ratios("ghn", k, rate_fn, baseline_rate, eval_only_rate, args.repeats))

    # (c) training step -----------------------------------------------------------
    x = tf.constant(rng.integers(0, 256, (args.batch_size,) + shape).astype(np.uint8))
    y = tf.constant(rng.integers(0, classes, args.batch_size).astype(np.int64))

    ghn_step = adam_step(proxy, proxy.trainable_variables, args.batch_size)
    inputs = [proxy.step_inputs(i, seed=np.array([0, i]), progress=0.0, global_batch_size=args.batch_size)
              for i in range(args.train_steps)]
    ghn_step(x, y, inputs[0]).numpy()
    standalone = []
    for a in space.sample_unique(args.train_candidates, seed=5):
        task = StandaloneTask(lambda a=a: space.build_model(a, input_shape=shape, num_classes=classes))
        task.build()
        s = adam_step(task, task.trainable_variables, args.batch_size)
        s(x, y, None).numpy()
        standalone.append(s)

    def seconds(fn):
        t = time.perf_counter()
        out = None
        for i in range(args.train_steps):
            out = fn(i)
        out.numpy()
        return (time.perf_counter() - t) / args.train_steps

    c_ghn, c_alone = [], []
    for _ in range(args.repeats):
        c_ghn.append(seconds(lambda i: ghn_step(x, y, inputs[i])))
        c_alone.append(np.mean([seconds(lambda i, s=s: s(x, y, None)) for s in standalone]))
    results["c_seconds_per_step_ghn"] = min(c_ghn)
    results["c_seconds_per_step_standalone"] = min(c_alone)
    results["c_ratio_ghn_over_standalone"] = min(c_ghn) / min(c_alone)

    return print_results(results, args.json)


if __name__ == "__main__":
    main()
