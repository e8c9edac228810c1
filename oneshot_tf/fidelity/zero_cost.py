"""Training-free ("zero-cost") architecture scores of a stand-alone model at
initialization, the baselines of the ranking-fidelity study.

* ``synflow`` (Tanaka et al. 2020, as a NAS proxy in Abdelfattah et al.
  2021, "Zero-cost proxies for lightweight NAS"): the synaptic flow of the
  network with absolute-valued weights and without batch normalization, fed
  an all-ones input; computed in float64 on a clone so deep nets do not
  overflow and the model's own weights are untouched.
* ``naswot`` (Mellor et al. 2021, "Neural Architecture Search without
  Training"): the log-determinant of the kernel of binary ReLU activation
  codes of a batch of images.

Both take a Keras *functional* model (the stand-alone models the search
spaces build).
"""

from __future__ import annotations

from typing import List, Tuple

import keras
import numpy as np
import tensorflow as tf

from oneshot_tf.layers import Standardize

__all__ = ["synflow", "naswot", "KERNEL_NAMES"]

#: names of the variables synflow sums over (conv and dense weights)
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


class _CastToFloat64(keras.layers.Layer):
    """What ``Standardize`` and batch normalization become in the synflow
    clone: a plain cast to float64 (so the all-ones input reaches the first
    weight layer as ones; identity on the float64 activations BN sees).

    Takes and ignores the call arguments the replaced layer's graph node
    passes (``training``, ``mask`` for BN): the clone re-calls every layer
    with the keyword arguments of the original node, which
    ``keras.layers.Identity`` does not accept.
    """

    def call(self, x, **kwargs):
        return keras.ops.cast(x, "float64")

    def compute_output_shape(self, input_shape):
        return input_shape


def _float64_clone(model: keras.Model) -> Tuple[keras.Model, List[Tuple[keras.layers.Layer, keras.layers.Layer]]]:
    """``model`` cloned with every layer in float64, BN as identity and
    ``Standardize`` as a cast; also the (original, clone) pairs of the
    layers cloned from config, whose weights the caller copies."""
    pairs: List[Tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone_function(layer):
        if isinstance(layer, Standardize):
            return _CastToFloat64(name=layer.name, dtype="float64")
        if isinstance(layer, keras.layers.BatchNormalization):
            return _CastToFloat64(name=layer.name, dtype="float64")
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation of the graph (e.g. a slice, ``x[..., a:b]``): dtype-agnostic
        config = layer.get_config()
        # The config's dtype is a serialized DTypePolicy (e.g. the float32 of
        # a head declared dtype="float32", or a mixed policy); a plain
        # "float64" replaces both the variable and the compute dtype.
        config["dtype"] = "float64"
        clone = layer.__class__.from_config(config)
        pairs.append((layer, clone))
        return clone

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    return clone, pairs


def synflow(model: keras.Model) -> float:
    """SynFlow score of ``model`` at its current weights.

    On a float64 clone with ``|theta|`` weights, BN removed and the input
    standardization replaced by a cast: ``R = sum(f(1))`` for an all-ones
    input of shape ``[1, *input_shape]`` in inference mode, and the score is
    ``sum over kernels of sum(|theta * dR/dtheta|)`` (conv and dense kernels;
    not biases).  ``model``'s weights are not changed.  Raises ValueError
    when the model has no kernel weights.
    """
    clone, pairs = _float64_clone(model)
    for original, copy in pairs:
        if len(original.weights) != len(copy.weights):
            raise ValueError(f"synflow: the float64 clone of layer {original.name!r} of model "
                             f"{model.name!r} has {len(copy.weights)} weights, the original "
                             f"{len(original.weights)}")
        for src, dst in zip(original.weights, copy.weights):
            value = np.asarray(keras.ops.convert_to_numpy(src))
            if np.issubdtype(value.dtype, np.floating):
                value = np.abs(value.astype(np.float64))
            dst.assign(value.astype(dst.dtype))

    kernels = [v for v in clone.weights if v.name in KERNEL_NAMES]
    if not kernels:
        raise ValueError(f"synflow: model {model.name!r} has no kernel weights "
                         f"({', '.join(KERNEL_NAMES)})")
    for v in kernels:
        if v.dtype != "float64":
            raise ValueError(f"synflow: kernel {v.path!r} of the clone of model {model.name!r} "
                             f"is {v.dtype}, not float64")

    ones = tf.nest.pack_sequence_as(
        model.input, [tf.ones([1, *inp.shape[1:]], dtype=inp.dtype) for inp in model.inputs])
    # Watch every kernel explicitly (frozen layers' kernels are not trainable
    # and would not be watched automatically).
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for v in kernels:
            tape.watch(v.value)
        out = clone(ones, training=False)
        outputs = tf.nest.flatten(out)
        for o in outputs:
            if o.dtype != tf.float64:
                raise ValueError(f"synflow: the clone of model {model.name!r} returns {o.dtype}, "
                                 "not float64")
        r = tf.add_n([tf.reduce_sum(o) for o in outputs])
    grads = tape.gradient(r, [v.value for v in kernels])
    score = 0.0
    for v, g in zip(kernels, grads):
        if g is None:  # a kernel the output does not depend on
            continue
        score += float(tf.reduce_sum(tf.abs(v.value * g)).numpy())
    return score


def _is_relu(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.relu


def naswot(model: keras.Model, images) -> float:
    """NASWOT score of ``model`` on the batch ``images`` (N >= 2).

    The batch runs through ``model`` in training mode (batch statistics);
    every ReLU unit's binary code ``output > 0`` (``keras.layers.ReLU``
    layers, ``Activation("relu")`` and layers with ``activation=relu``),
    flattened per example, builds ``K = c c^T + (1-c)(1-c)^T`` (N minus the
    Hamming distance), accumulated layer by layer in float64; the score is
    ``log|det K|`` (``-inf`` when K is singular).

    Calling BN layers in training mode updates their moving statistics;
    this function restores every non-trainable variable of ``model``
    afterwards, so the model is left as it was.  Raises ValueError when
    ``model`` has no ReLU layer or the batch has fewer than two images.
    """
    n = int(images.shape[0])
    if n < 2:
        raise ValueError(f"naswot needs a batch of at least 2 images, got {n}")
    if len(model.inputs) != 1:
        raise ValueError(f"naswot: model {model.name!r} has {len(model.inputs)} inputs; it takes one")
    relus = [layer for layer in model.layers if _is_relu(layer)]
    if not relus:
        raise ValueError(f"naswot: model {model.name!r} has no ReLU layers")
    probe = keras.Model(model.inputs, [layer.output for layer in relus], name=f"{model.name}_relus")

    saved = [(v, np.array(keras.ops.convert_to_numpy(v))) for v in model.non_trainable_variables]
    try:
        outputs = probe([images], training=True)  # the structure of ``model.inputs``
    finally:
        for v, value in saved:
            v.assign(value)

    k = np.zeros((n, n), dtype=np.float64)
    for out in tf.nest.flatten(outputs):
        c = (np.asarray(keras.ops.convert_to_numpy(out)).reshape(n, -1) > 0).astype(np.float64)
        k += c @ c.T + (1.0 - c) @ (1.0 - c).T
    sign, logabsdet = np.linalg.slogdet(k)
    if sign == 0:
        return float("-inf")
    return float(logabsdet)
