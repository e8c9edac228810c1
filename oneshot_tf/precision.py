"""Keras mixed precision policies for the one-shot and stand-alone models.

A model takes the global Keras dtype policy in force when it is *built*
(constructed): under ``"mixed_bfloat16"`` or ``"mixed_float16"`` its
convolutions compute in bfloat16/float16 while every variable stays float32.
The numerically sensitive parts stay float32 whatever the policy: input
standardization, batch norm (ghost BN in the one-shot model, Keras BN in the
stand-alone models), the head's pooling and logits (models return float32
logits, so softmax and losses are float32) and the masked L2 term.

``"mixed_float16"`` needs loss scaling in the optimizer (see
``keras.optimizers.LossScaleOptimizer``); ``"mixed_bfloat16"`` does not.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras

from oneshot_tf.config import PRECISIONS




def check_precision(name: str) -> str:
    """``name`` if it is one of ``PRECISIONS``, else a ValueError naming them."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown --precision={name!r}; choose from {', '.join(PRECISIONS)}")
    return name


def set_precision(name: str) -> None:
    """Set the global Keras dtype policy to ``name`` (one of ``PRECISIONS``).

    Models built afterwards use it; models already built keep theirs.
    """
    keras.mixed_precision.set_global_policy(check_precision(name))


def current_precision() -> str:
    """The name of the global Keras dtype policy."""
    return keras.mixed_precision.global_policy().name


@contextlib.contextmanager
def precision_scope(name: str) -> Iterator[str]:
    """Set the global policy to ``name`` inside the ``with`` block and restore
    the previous global policy on exit (also on an exception)."""
    check_precision(name)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)
