"""A task's training step as the benchmarks time it: its loss, gradients and
an Adam update in one ``tf.function``."""

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
