"""oneshot_tf: one-shot neural architecture search for Keras 3 / TensorFlow.

Main entry points: ``cell_space.CellSearchSpace`` (architectures as data),
``oneshot.OneShotProxy`` (the one-shot model and its training),
``pipeline.SearchRun`` (train, score, retrain and export), ``tuner``
(keras-tuner integration).
"""

__version__ = "0.1.0"
