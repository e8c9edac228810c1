"""What the speed benchmarks time: a task's training step (its loss,
gradients and an Adam update in one ``tf.function``) and a proxy's scorer."""

from __future__ import annotations


def adam_step(task, variables, batch_size: int):
    """``step(images, labels, step_inputs)`` -> loss: one Adam update of
    ``variables`` on ``task.loss`` (``step_inputs`` None for a task that takes
    none, e.g. a stand-alone model's)."""
    import keras
    import tensorflow as tf

    opt = keras.optimizers.Adam(1e-3)
    opt.build(variables)

    @tf.function
    def step(images, labels, step_inputs):
        with tf.GradientTape() as tape:
            kwargs = {"step_inputs": step_inputs} if step_inputs is not None else {}
            loss, _ = task.loss(images, labels, progress=tf.constant(0.5), seed=tf.constant([1, 2]),
                                global_batch_size=batch_size, num_replicas=1, **kwargs)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def scorer_rate(proxy, encodings, x, y, *, candidates_per_pass: int, group_size: int):
    """``(scorer, rate)``: a ``CandidateScorer`` of ``proxy`` on ``x, y``,
    traced once, and ``rate()``, candidates per second scoring every one of
    ``encodings`` (``candidates_per_pass`` at a time)."""
    import time

    from oneshot_tf.scoring import CandidateScorer, ScoreConfig

    k = candidates_per_pass
    scorer = CandidateScorer(proxy, ScoreConfig(candidates_per_pass=k, group_size=group_size, kl_examples=0,
                                                verbose=False)).prepare(x, y)
    scorer.score_encodings(encodings[:k])  # the one trace

    def rate():
        t = time.perf_counter()
        for s in range(0, len(encodings), k):
            scorer.score_encodings(encodings[s:s + k])
        return len(encodings) / (time.perf_counter() - t)

    return scorer, rate


def scoring_ratios(method: str, per_pass: int, proxy_rate, build_rate, prebuilt_rate, repeats: int):
    """Benchmark (b)'s numbers: the three rates (candidates per second of the
    proxy's scorer, of building a stand-alone model per candidate, of those
    models prebuilt) measured interleaved, best of ``repeats``, and
    ``b_ratio`` = proxy over build = (prebuilt over build) x (proxy over
    prebuilt)."""
    best = [0.0, 0.0, 0.0]
    for _ in range(repeats):
        for i, fn in enumerate((proxy_rate, build_rate, prebuilt_rate)):
            best[i] = max(best[i], fn())
    b, bb, be = best
    return {f"b_candidates_per_s_{method}_{per_pass}_per_pass": b, "b_candidates_per_s_standalone_build": bb,
            "b_candidates_per_s_standalone_prebuilt": be, "b_ratio": b / bb, "b_ratio_prebuilt_over_build": be / bb,
            f"b_ratio_{method}_over_prebuilt": b / be}
