"""``--deterministic``: the same run on the same machine gives the same
weights, bit for bit.

Checked on the one-shot quick preset, whose proxy training does not repeat
without it (measured: 814 of its 819 checkpointed values differed after 10
steps of two runs): TensorFlow's ``AddN`` adds its inputs in an order that
starts with the one whose buffer it can reuse, which varies with the timing
of ops running side by side (``oneshot_tf.distribute.configure_runtime``).
(The GHN and SMASH quick presets repeated after 8 steps without it, and with
it; not a test: it could not fail.)  Each run is a fresh process of the real
binary, as a user reruns it."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.test_pipeline import _cli


def _checkpoint(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/proxy"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.mark.integration  # two processes of the binary (~40 s each): CI's integration step
def test_deterministic_training_repeats_bit_for_bit(tmp_path):
    runs = []
    for name in ("a", "b"):
        out = _cli("experiments.train", "--method=oneshot", "--preset=quick", "--train_steps=8",
                   "--checkpoint_every=8", "--deterministic", "--quiet", f"--model_dir={tmp_path / name}")
        assert out.returncode == 0, out.stderr[-3000:]
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["flags"]["deterministic"] is True
        runs.append(_checkpoint(tmp_path / name))
    a, b = runs
    assert sorted(a) == sorted(b) and any("optimizer" in n for n in a)
    differ = [n for n in a if not np.array_equal(a[n], b[n])]
    assert not differ, f"{len(differ)} of {len(a)} checkpointed values differ, e.g. {differ[:3]}"
