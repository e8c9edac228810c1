"""Hypernetwork methods (SMASH, GHN), one subpackage each.

Each will implement ``oneshot_tf.search_space.SearchSpace`` and
``oneshot_tf.proxy.Proxy`` and register itself with
``oneshot_tf.registry.register`` in its ``__init__`` (see
``oneshot_tf/methods/oneshot/__init__.py``); the registry imports every
subpackage of this package.  None is implemented yet.
"""
