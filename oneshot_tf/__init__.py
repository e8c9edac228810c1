"""oneshot_tf: one-shot neural architecture search for Keras 3 / TensorFlow.

Main entry points: ``registry`` (the search methods, each a plug-in: one-shot
in ``methods.oneshot``), ``config.resolve`` (a method's preset plus flags),
``pipeline.SearchRun`` (train the proxy, score candidates, retrain and export
the winners), ``search_space.SearchSpace`` and ``proxy.Proxy`` (the two
interfaces a method implements), ``tuner`` (keras-tuner integration).
"""

__version__ = "0.1.0"
