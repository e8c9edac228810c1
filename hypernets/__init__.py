"""Hypernetwork methods, one subpackage each: ``smash`` (SMASH, Brock et al.
2018) and ``ghn`` (Graph HyperNetworks, Zhang et al. 2019).

Each implements ``oneshot_tf.search_space.SearchSpace`` and
``oneshot_tf.proxy.Proxy`` and registers itself with
``oneshot_tf.registry.register`` in its ``__init__`` (as
``oneshot_tf/methods/oneshot/__init__.py`` does); the registry imports every
subpackage of this package.
"""
