"""Speed of the SMASH proxy against stand-alone models, side by side in one run.

    python -m benchmarks.smash_speed [--image_size=16 --filters=16 --num_blocks=2 ...]

Defaults: the SMASH quick preset (``hypernets.smash.PRESETS["quick"]``):
digits at 16x16 (320 validation examples), 2 blocks, 16 filters, banks of 8
up to 32 units, 8 banks per block, depth 2, the HyperNet's dense blocks 4,
4, 2, batches of 64 in BN groups of 32, 8 candidates per pass.

(b) candidates scored per second by ``CandidateScorer`` with the SMASH proxy
    (per candidate, in one compiled pass of K candidates: the HyperNet
    generates the 1x1 weights from c, the padded SMASH network runs on the
    examples) / candidates per second when a stand-alone Keras model is built
    per candidate and evaluated on the same examples (a new model, a new
    trace), target >= 20.  Also measured: the same stand-alone models
    evaluated after they were built and traced (``prebuilt``): ``b_ratio`` is
    the product of what not rebuilding gains (prebuilt over build) and what
    the SMASH pass gains or loses against evaluating each prebuilt model
    (smash over prebuilt); SMASH still runs every candidate's network, padded.
(c) seconds per SMASH training step (an architecture's encoding c and padded
    structure as tensors, the HyperNet generates the 1x1 weights, the padded
    SMASH network runs, ``SmashProxy.loss``, gradients into the HyperNet and
    the free weights, Adam; one ``tf.function`` traced once for every
    architecture) / a training step of the same architecture's own
    stand-alone model (same batch, Adam), averaged over
    ``--train_candidates`` architectures: ``c_ratio``, target <= 2.  The
    SMASH steps cycle through those architectures, a different one every
    step, as in training; drawing and encoding an architecture on the host
    (``SmashProxy.step_inputs``) is timed apart (``c_seconds_per_draw_host``),
    not in the steps.  Decomposition: the same padded network trained with
    its 1x1 weights a learned matrix instead of the HyperNet's output
    (``padded_fixed``): ``c_ratio`` is the product of what generating the
    weights costs (smash over padded_fixed) and what padding and masking
    cost (padded_fixed over standalone).

Ratios are what to read: both sides run in the same process, interleaved,
best of ``--repeats``.  ``--intra_op_threads`` as in ``benchmarks.benchmark``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import time

import numpy as np

from benchmarks.report import print_results
from benchmarks.steps import adam_step, scorer_rate, scoring_ratios

#: SmashSettings fields exposed as flags, defaults from the quick preset (else the settings' own).
SETTINGS_FLAGS = ("num_blocks", "filters", "base", "max_units", "max_banks", "depth", "depth_compression",
                  "kernel_sizes", "max_dilation", "max_extent", "groups", "bottleneck", "growth",
                  "hypernet_blocks", "group_size")


def main(argv=None):
    from hypernets.smash import PRESETS, SmashSettings

    quick = PRESETS["quick"]
    defaults = {f.name: f.default for f in dataclasses.fields(SmashSettings)}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_size", type=int, default=quick["image_size"])
    for name in SETTINGS_FLAGS:
        default = quick.get(name, defaults[name])
        p.add_argument(f"--{name}", type=type(default), default=default)
    p.add_argument("--batch_size", type=int, default=quick["batch_size"])
    p.add_argument("--candidates", type=int, default=16, help="candidates per scoring measurement")
    p.add_argument("--candidates_per_pass", type=int, default=quick["candidates_per_pass"])
    p.add_argument("--eval_examples", type=int, default=quick["validation_size"],
                   help="validation examples, scored by both sides")
    p.add_argument("--baseline_candidates", type=int, default=4)
    p.add_argument("--train_steps", type=int, default=10, help="timed steps per architecture per repeat")
    p.add_argument("--train_candidates", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--intra_op_threads", type=int, default=quick.get("intra_op_threads", 1))
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)

    from hypernets.smash.proxy import SmashProxy
    from oneshot_tf.data import load_dataset
    from oneshot_tf.retrain import StandaloneTask
    from oneshot_tf.search_space import StandaloneOptions

    keras.utils.set_random_seed(0)
    settings = SmashSettings(**{name: getattr(args, name) for name in SETTINGS_FLAGS})
    settings.check()
    space = settings.search_space()
    data = load_dataset("digits", image_size=args.image_size, validation_size=args.eval_examples)
    shape, classes = data.image_shape, data.num_classes
    mean, std = data.channel_stats()
    proxy = SmashProxy(space, input_shape=shape, num_classes=classes, mean=mean, std=std,
                       group_size=settings.group_size, weight_decay=settings.weight_decay, growth=settings.growth,
                       block_layers=[int(n) for n in settings.hypernet_blocks.split(",")])
    proxy.build()
    options = StandaloneOptions(mean=mean, std=std)

    def standalone(arch):
        return space.build_model(arch, input_shape=shape, num_classes=classes, options=options)

    results = {"machine": platform.processor() or platform.machine(), "tensorflow": tf.__version__,
               "encoding_shape": "x".join(map(str, space.encoding_shape)),
               "hypernet_params": int(sum(np.prod(v.shape) for v in proxy.model.hypernet.trainable_variables)),
               "network_params": int(sum(np.prod(v.shape) for v in proxy.model.network.trainable_variables)),
               "config": vars(args)}

    # (b) candidates per second -------------------------------------------------
    g = proxy.group_size
    xv, yv = data.x_val[: args.eval_examples], data.y_val[: args.eval_examples]
    archs = space.sample_unique(args.candidates, seed=3)
    encs = [proxy.encode(a) for a in archs]
    k = args.candidates_per_pass
    scorer, rate_fn = scorer_rate(proxy, encs, xv, yv, candidates_per_pass=k, group_size=g)

    groups = [(tf.constant(xv[i:i + g]), yv[i:i + g]) for i in range(0, len(xv) - g + 1, g)]

    def evaluate(fwd):
        # batch statistics per group, as SMASH scores
        return sum(int(np.sum(np.argmax(fwd(im), -1) == lab)) for im, lab in groups)

    def baseline_rate():
        t = time.perf_counter()
        for a in archs[: args.baseline_candidates]:
            m = standalone(a)
            evaluate(tf.function(lambda im: m(im, training=True)))
        return args.baseline_candidates / (time.perf_counter() - t)

    # The baseline's evaluation alone (models built and traced beforehand):
    # what skipping the rebuild alone gains.
    built = []
    for a in archs[: args.baseline_candidates]:
        fwd = tf.function(lambda im, m=standalone(a): m(im, training=True))
        fwd(groups[0][0])
        built.append(fwd)

    def prebuilt_rate():
        t = time.perf_counter()
        for fwd in built:
            evaluate(fwd)
        return len(built) / (time.perf_counter() - t)

    results["b_examples_per_candidate"] = len(groups) * g
    results.update(scoring_ratios("smash", k, rate_fn, baseline_rate, prebuilt_rate, args.repeats))
    results["b_scorer_traces"] = scorer.trace_count

    # (c) training step -----------------------------------------------------------
    x = tf.constant(data.x_train[: args.batch_size])
    y = tf.constant(data.y_train[: args.batch_size])

    train_archs = space.sample_unique(args.train_candidates, seed=5)
    # each architecture as SmashProxy.step_inputs gives it: a batch of one
    inputs = [{name: tf.constant(v[None]) for name, v in proxy.encode(a).items()} for a in train_archs]

    # The same padded network (a second proxy's, built the same way) with its
    # 1x1 weights a learned matrix, initialized to the HyperNet's output for
    # the first architecture, instead of generated: the HyperNet is never called.
    fixed = copy.copy(proxy)
    fixed.model = None
    fixed.build()
    matrix = keras.Variable(proxy.model.weights_matrix(inputs[0]["c"][0]), name="matrix")
    fixed.model.weights_matrix = lambda c: matrix
    hypernet = {id(v) for v in fixed.model.hypernet.trainable_variables}
    fixed_variables = [v for v in fixed.trainable_variables if id(v) not in hypernet] + [matrix]

    smash_step = adam_step(proxy, proxy.trainable_variables, args.batch_size)
    fixed_step = adam_step(fixed, fixed_variables, args.batch_size)
    for s in (smash_step, fixed_step):
        for inp in inputs:
            s(x, y, inp).numpy()
    alone = []
    for a in train_archs:
        task = StandaloneTask(lambda a=a: standalone(a))
        task.build()
        s = adam_step(task, task.trainable_variables, args.batch_size)
        s(x, y, None).numpy()
        alone.append(s)

    def seconds(fn, n):
        t = time.perf_counter()
        out = None
        for i in range(n):
            out = fn(i)
        out.numpy()
        return (time.perf_counter() - t) / n

    n = args.train_steps * len(inputs)  # every architecture train_steps times, a different one each step
    c_smash, c_fixed, c_alone = [], [], []
    for _ in range(args.repeats):
        c_smash.append(seconds(lambda i: smash_step(x, y, inputs[i % len(inputs)]), n))
        c_fixed.append(seconds(lambda i: fixed_step(x, y, inputs[i % len(inputs)]), n))
        c_alone.append(np.mean([seconds(lambda i, s=s: s(x, y, None), args.train_steps) for s in alone]))

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for i in range(args.train_steps):
        proxy.step_inputs(i, seed=rng.integers(0, 2 ** 31, 2), progress=0.0, global_batch_size=args.batch_size)
    results["c_seconds_per_draw_host"] = (time.perf_counter() - t) / args.train_steps
    results["c_seconds_per_step_smash"] = min(c_smash)
    results["c_seconds_per_step_padded_fixed"] = min(c_fixed)
    results["c_seconds_per_step_standalone"] = float(min(c_alone))
    results["c_ratio"] = min(c_smash) / min(c_alone)
    results["c_ratio_smash_over_padded_fixed"] = min(c_smash) / min(c_fixed)
    results["c_ratio_padded_fixed_over_standalone"] = min(c_fixed) / min(c_alone)
    results["c_smash_step_traces"] = smash_step.experimental_get_tracing_count()

    return print_results(results, args.json)


if __name__ == "__main__":
    main()
