"""Strategy selection by name."""

import pytest
import tensorflow as tf

from oneshot_tf.distribute import STRATEGIES, get_distribution_strategy


def test_default_and_one_device_and_mirrored():
    assert get_distribution_strategy("default") is tf.distribute.get_strategy()
    one = get_distribution_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    mirrored = get_distribution_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == max(1, len(tf.config.list_logical_devices("GPU")))


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'horovod'; choose from " + ", ".join(STRATEGIES)):
        get_distribution_strategy("horovod")
