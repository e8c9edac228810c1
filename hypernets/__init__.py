"""Hypernetwork proxies (SMASH, GHN).

Reserved for the SMASH and GHN methods, which will implement
``oneshot_tf.search_space.SearchSpace`` / ``oneshot_tf.proxy.Proxy`` and
register in ``oneshot_tf.pipeline.METHODS``; nothing is implemented here yet.
"""
