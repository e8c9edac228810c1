"""The contract every registered method keeps, as functions of a method name.

``tests/test_contract.py`` runs them over every registered method (a method
joins by registering, with no test edits); ``tests/test_plugin.py`` runs them
on a method that lives in that test file.  Each works on the method's
``tiny`` preset and the embedded digits.
"""

from __future__ import annotations

import json
import os

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import config as config_lib
from oneshot_tf import io_utils, pipeline, plots, registry, training
from oneshot_tf.precision import precision_scope
from oneshot_tf.proxy import Proxy
from oneshot_tf.scoring import CandidateScorer, ScoreConfig
from oneshot_tf.search_space import ArchitectureError, StandaloneOptions, canonical_json

#: Generic overrides that keep every method's pipeline short.
SHORT = dict(train_steps=2, num_candidates=4, candidates_per_pass=2, num_winners=1, retrain_steps=2,
             retrain_batch_size=16, checkpoint_every=1, log_every=1)


def built(method: str, **overrides):
    """``(cfg, dataset, space, proxy)`` of the method's tiny preset."""
    cfg = config_lib.resolve("tiny", {**overrides, "jit_compile": False}, method=method)
    dataset = pipeline.load_data(cfg)
    space, proxy = registry.get(method).build(cfg, dataset)
    return cfg, dataset, space, proxy


def samples(space, n=6, seed=0):
    return space.sample_unique(min(n, space.size()), seed=seed)


def set_values(proxy, values):
    """Assign ``values`` (arrays of another build of the same proxy, by
    position: auto-generated layer names differ between builds) to the
    built ``proxy``'s checkpointed variables; returns those variables."""
    variables = training.checkpoint_variables(proxy.model)
    assert [tuple(v.shape) for v in variables] == [np.shape(w) for w in values]
    for v, w in zip(variables, values):
        v.assign(w)
    return variables


def check_registration(method: str, **overrides):
    m = registry.get(method)
    config_lib.validate(config_lib.resolve("tiny", overrides, method=method))
    assert m.name == method and m.description
    assert {"quick", "tiny", "paper"} <= set(m.presets)
    for preset in m.presets:
        cfg = config_lib.resolve(preset, {}, method=method)
        assert type(cfg.settings) is m.settings and cfg.method == method
        config_lib.validate(cfg)
        assert config_lib.RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for f in config_lib.fields(m.settings):
        assert f.metadata["help"].strip(), f"--{f.name} has no help"


def check_json_round_trip(method: str, **overrides):
    _, _, space, _ = built(method, **overrides)
    archs = samples(space)
    for arch in archs:
        obj = space.to_json(arch)
        assert json.loads(json.dumps(obj)) == obj
        assert space.from_json(obj) == arch
        assert space.from_json(json.dumps(obj)) == arch
        assert space.arch_id(space.from_json(obj)) == space.arch_id(arch)
        assert space.validate(arch) is arch
    assert len({space.arch_id(a) for a in archs}) == len(archs)
    # the space rebuilds from its config
    again = type(space).from_config(json.loads(json.dumps(space.get_config())))
    assert again.get_config() == space.get_config() and again.size() == space.size()
    assert [again.to_json(a) for a in samples(again)] == [space.to_json(a) for a in archs]


def check_hyperparameter_round_trip(method: str, **overrides):
    _, _, space, _ = built(method, **overrides)
    hp = keras_tuner.HyperParameters()
    space.declare_hyperparameters(hp)
    declared = {p.name: p for p in hp.space}
    assert declared
    archs = samples(space)
    # a space that perturbs its own architectures (SMASH's) may carry them in a
    # Fixed hyperparameter whose value differs per trial (keras-tuner keeps a
    # trial's value); its perturbations must stay in the space
    self_perturbing = space.perturb(archs[0], np.random.default_rng(0), 0.0) is not None
    for i, arch in enumerate(archs):
        values = space.to_hyperparameters(arch)
        assert set(values) == set(declared)
        for name, value in values.items():
            fixed = isinstance(declared[name], keras_tuner.engine.hyperparameters.Fixed)
            if hasattr(declared[name], "values") and not (self_perturbing and fixed):
                assert value in declared[name].values, (name, value)
        assert space.from_hyperparameters(values) == arch
        if self_perturbing:
            moved = space.perturb(arch, np.random.default_rng(i), 0.05)
            assert space.from_hyperparameters(space.to_hyperparameters(moved)) == moved


def check_validation_errors(method: str, **overrides):
    _, _, space, _ = built(method, **overrides)
    for bad in ("{not json", "[]", 42, {}, {"unexpected": 1}, None):
        with pytest.raises(ArchitectureError) as info:
            space.from_json(bad)
        assert str(info.value).strip()
    with pytest.raises(ArchitectureError):
        space.validate(object())


def check_fixed_shape_encodings(method: str, **overrides):
    _, _, space, proxy = built(method, **overrides)
    encs = [proxy.encode(a) for a in samples(space)]
    layout = {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in encs[0].items()}
    assert layout
    for e in encs[1:]:
        assert {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in e.items()} == layout
    assert len({canonical_json({k: np.asarray(v).tolist() for k, v in e.items()}) for e in encs}) == len(encs)


def check_counts_match_keras(method: str, **overrides):
    _, dataset, space, _ = built(method, **overrides)
    for arch in samples(space, n=3):
        model = space.build_model(arch, input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                                  options=StandaloneOptions())
        assert space.count_params(arch, input_shape=dataset.image_shape,
                                  num_classes=dataset.num_classes) == model.count_params()
        flops = space.count_flops(arch, input_shape=dataset.image_shape, num_classes=dataset.num_classes)
        assert isinstance(flops, int) and flops > 0
        logits = model(tf.zeros((2,) + dataset.image_shape, tf.uint8), training=False)
        assert logits.shape == (2, dataset.num_classes) and logits.dtype == tf.float32
        wide = space.widened(1)
        assert wide.count_params(arch, input_shape=dataset.image_shape,
                                 num_classes=dataset.num_classes) == model.count_params()


def check_graphs_topological(method: str, **overrides):
    _, _, space, _ = built(method, **overrides)
    for arch in samples(space, n=3):
        try:
            graph = space.graph(arch)
        except NotImplementedError:
            return
        ids = [n["id"] for n in graph["nodes"]]
        assert len(set(ids)) == len(ids)
        order = {n: i for i, n in enumerate(ids)}
        for src, dst in graph["edges"]:
            assert order[src] < order[dst], (src, dst)


def check_candidates_logits_equal_tiled_default(method: str, **overrides):
    _, dataset, space, proxy = built(method, **overrides)
    proxy.build()
    g = proxy.group_size
    images = tf.constant(dataset.x_val[:2 * g])
    archs = samples(space, n=3)
    enc = {k: tf.constant(np.stack([np.asarray(proxy.encode(a)[k]) for a in archs])) for k in proxy.encode(archs[0])}
    fast = proxy.candidates_logits(images, enc, g)
    tiled = Proxy.candidates_logits(proxy, images, enc, g)
    assert fast.shape == (3, 2 * g, dataset.num_classes)
    np.testing.assert_allclose(np.asarray(fast, np.float32), np.asarray(tiled, np.float32), rtol=1e-4, atol=1e-4)


def check_one_trace_across_candidates(method: str, **overrides):
    _, dataset, space, proxy = built(method, **overrides)
    proxy.build()
    scorer = CandidateScorer(proxy, ScoreConfig(candidates_per_pass=2, group_size=proxy.group_size,
                                                kl_examples=proxy.group_size, verbose=False))
    scorer.prepare(dataset.x_val, dataset.y_val, dataset.x_train)
    archs = samples(space, n=5)
    scores = []
    for s in range(0, len(archs), 2):
        scores += scorer.score_encodings([proxy.encode(a) for a in archs[s:s + 2]])
    assert scorer.trace_count == 1
    assert len(scores) == len(archs)
    for sc in scores:
        assert 0.0 <= sc["score"] <= 1.0 and np.isfinite(sc["score"])
        assert ("kl" in sc) == (proxy.reference_encodings(1, 0) is not None)


#: Mixed precision policies and the largest difference of a proxy's candidates' logits from the float32
#: proxy's with the same weights (relative to the largest float32 logit, at least 1).
MIXED_TOLERANCE = {"mixed_bfloat16": 5e-2, "mixed_float16": 1e-2}


def check_mixed_precision(method: str, **overrides):
    """Under ``--precision=mixed_bfloat16`` (TPU) and ``mixed_float16`` (GPU)
    the proxy, with the float32 proxy's weights, gives that proxy's training
    loss, gradients and candidates' logits up to 16-bit rounding; its
    variables, loss and logits are float32."""
    cfg, dataset, space, ref = built(method, **overrides)
    ref.build()
    b, g = cfg.batch_size, ref.group_size
    images, labels = tf.constant(dataset.x_train[:b]), tf.constant(dataset.y_train[:b])
    seed = np.array([1, 2], np.int32)
    extra = ref.step_inputs(0, seed=seed, progress=0.5, global_batch_size=b)
    kwargs = {} if extra is None else {"step_inputs": tf.nest.map_structure(tf.constant, extra)}
    archs = samples(space, n=2)
    enc = {k: tf.constant(np.stack([np.asarray(ref.encode(a)[k]) for a in archs])) for k in ref.encode(archs[0])}
    val = tf.constant(dataset.x_val[:2 * g])

    def loss_and_gradients(proxy):
        with tf.GradientTape() as tape:
            loss, _ = proxy.loss(images, labels, progress=tf.constant(0.5), seed=tf.constant(seed),
                                 global_batch_size=b, num_replicas=1, **kwargs)
        grads = tape.gradient(loss, proxy.trainable_variables)
        flat = [None if gr is None else np.ravel(tf.convert_to_tensor(gr)) for gr in grads]  # dense
        return loss, flat, proxy.candidates_logits(val, enc, g)

    ref_loss, ref_grads, ref_logits = loss_and_gradients(ref)
    want = np.concatenate([gr for gr in ref_grads if gr is not None])
    assert np.abs(want).max() > 0
    for policy, tolerance in MIXED_TOLERANCE.items():
        with precision_scope(policy):
            low = built(method, **overrides)[3]
            low.build()
        dst = set_values(low, [v.numpy() for v in training.checkpoint_variables(ref.model)])
        assert all(v.dtype == "float32" for v in dst), (policy, sorted({v.dtype for v in dst}))
        loss, grads, logits = loss_and_gradients(low)
        assert loss.dtype == tf.float32 and np.isfinite(float(loss)), policy
        assert float(loss) == pytest.approx(float(ref_loss), rel=2e-2), policy
        assert [gr is None for gr in grads] == [gr is None for gr in ref_grads], policy
        got = np.concatenate([gr for gr in grads if gr is not None])
        assert np.all(np.isfinite(got)), policy
        assert np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.95, policy  # same direction
        assert logits.dtype == tf.float32 and logits.shape == ref_logits.shape, policy
        scale = max(1.0, float(np.abs(ref_logits).max()))
        assert float(np.abs(np.asarray(logits) - np.asarray(ref_logits)).max()) / scale < tolerance, policy


def check_two_replicas_equal_one_device(method: str, model_dir: str, strategy, **overrides):
    """Two training steps under ``strategy`` (two replicas, the global batch
    split between them, each drawing its share of a step's randomness: the
    second step is at progress 0.5, where one-shot's path dropout is active)
    end where one device's do, with the same loss."""
    cfg, data = built(method, **overrides)[:2]
    batch = strategy.num_replicas_in_sync * cfg.batch_size  # whole groups (and meta-batches) on every replica
    x, y = data.x_train[:2 * batch], data.y_train[:2 * batch]
    cfg_train = training.TrainConfig(steps=2, batch_size=batch, learning_rate=0.05, lr_schedule="constant",
                                     seed=5, verbose=False)
    init, final, metrics = None, [], []
    for s in (tf.distribute.get_strategy(), strategy):
        keras.utils.set_random_seed(0)
        proxy = built(method, **overrides)[3]
        proxy.validate_batch(batch, s.num_replicas_in_sync)
        with s.scope():
            proxy.build()
        if init is None:  # the first build's initial values, and which of them train
            trainable = {id(v) for v in proxy.trainable_variables}
            init = [(v.numpy(), id(v) in trainable) for v in training.checkpoint_variables(proxy.model)]
        variables = set_values(proxy, [w for w, _ in init])
        metrics.append(training.train(proxy, x, y, cfg_train, os.path.join(model_dir, str(len(final))),
                                      strategy=s))
        final.append([v.numpy() for v, (_, trains) in zip(variables, init) if trains])
        keras.backend.clear_session()
    assert metrics[1]["loss"] == pytest.approx(metrics[0]["loss"], rel=1e-5)
    for one, two in zip(*final):
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
    start = [w for w, trains in init if trains]
    assert sum(int(not np.array_equal(w, w0)) for w, w0 in zip(final[0], start)) > len(start) // 2  # trained


def check_restored_proxy(trained, restored, fresh):
    """``restored`` (a proxy restored from its checkpoint, as scoring in
    another process, resuming and the study restore it) holds the values of
    every variable of ``trained`` (the proxy that trained, in memory),
    whatever Python container holds its layers; ``fresh`` (built, never
    trained) shows that training moved them, so the comparison can fail."""
    fresh.build()

    def values(proxy):  # by position, as checkpoints key them
        return [(v.path, v.numpy()) for v in training.checkpoint_variables(proxy.model)]

    trained, restored, fresh = values(trained), values(restored), values(fresh)
    assert [t.shape for _, t in trained] == [r.shape for _, r in restored] == [f.shape for _, f in fresh]
    moved = [p for (p, t), (_, f) in zip(trained, fresh) if not np.array_equal(t, f)]
    assert len(moved) >= len(trained) // 2, f"only {len(moved)} of {len(trained)} variables trained"
    wrong = [p for (p, t), (_, r) in zip(trained, restored) if not np.array_equal(t, r)]
    assert not wrong, f"{len(wrong)} of {len(trained)} variables not restored, e.g. {wrong[:3]}"


def check_pipeline_artifacts(method: str, model_dir: str, **overrides):
    """train, score, retrain and export on the tiny preset; a rerun does no
    new work, and the proxy it restores is the one that trained; a given
    architecture (winner 1's) is scored as the search scored it, and
    retrained and exported."""
    cfg = config_lib.resolve("tiny", {**SHORT, **overrides}, method=method)
    run = pipeline.SearchRun(cfg, model_dir, verbose=False)
    results = run.run()
    stored = io_utils.read_json(os.path.join(model_dir, "config.json"))
    assert stored["method"] == method and stored["flags"]["method"] == method
    assert stored["search_space"] == run.space.get_config() and stored["proxy"] == run.proxy.get_config()
    with open(os.path.join(model_dir, "candidates.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == cfg.num_candidates == len({r["id"] for r in records})
    for r in records:
        arch = run.space.from_json(r["architecture"])
        assert r["id"] == run.space.arch_id(arch) and r["method"] == method
        assert r["params"] == run.space.count_params(arch, input_shape=run.dataset.image_shape,
                                                     num_classes=run.dataset.num_classes)
    assert len(results) == cfg.num_winners
    for w in results:
        out = os.path.join(model_dir, "winners", str(w["rank"]))
        loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
        probs = loaded.serve(tf.constant(run.dataset.x_test[:8])).numpy()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert 0.0 <= w["test_accuracy"] <= 1.0
        # a space that draws its architectures: each winner's drawing beside it (None: the space has no graph)
        arch = run.space.from_json(io_utils.read_json(os.path.join(out, "architecture.json")))
        want = plots.space_architecture_png(run.space, arch, title=f"{w['id']}: test accuracy "
                                                                    f"{w['test_accuracy']:.4f}")
        png = os.path.join(out, "architecture.png")
        assert os.path.exists(png) == (want is not None)
        if want is not None:
            with open(png, "rb") as f:
                assert tf.image.decode_png(f.read()).shape == tf.image.decode_png(want).shape
    candidates = os.path.join(model_dir, "candidates.jsonl")
    before = os.stat(candidates).st_mtime_ns
    rerun = pipeline.SearchRun(cfg, model_dir, verbose=False)
    assert rerun.run() == results
    assert os.stat(candidates).st_mtime_ns == before  # nothing scored again
    check_restored_proxy(run.proxy, rerun.proxy, pipeline.SearchRun(cfg, model_dir, verbose=False).proxy)
    # a given architecture (here winner 1's): scored again as the search scored it, retrained as winner 1 is
    again = rerun.score_architecture(results[0]["id"])
    first = next(r for r in records if r["id"] == results[0]["id"])
    assert (again["score"], again["rank"], again["ranked_among"]) == (first["score"], 1, len(records))
    given = rerun.retrain_architecture(os.path.join(model_dir, "winners", "1", "architecture.json"))
    assert (given["id"], given["params"], given["proxy_score"]) == (results[0]["id"], results[0]["params"],
                                                                    results[0]["proxy_score"])
    loaded = tf.saved_model.load(os.path.join(model_dir, given["saved_model"]))
    np.testing.assert_allclose(loaded.serve(tf.constant(run.dataset.x_test[:8])).numpy().sum(-1), 1.0, atol=1e-5)
    keras.backend.clear_session()
    return run, records


CHECKS = (check_registration, check_json_round_trip, check_hyperparameter_round_trip, check_validation_errors,
          check_fixed_shape_encodings, check_counts_match_keras, check_graphs_topological,
          check_candidates_logits_equal_tiled_default, check_one_trace_across_candidates, check_mixed_precision)
