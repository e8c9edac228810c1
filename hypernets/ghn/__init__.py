"""Graph HyperNetworks (Zhang et al., ICLR 2019), in progress: ``gnn`` holds
the graph network (GRU updates from MLP messages over padded DAGs,
forward-backward level by level, or synchronous).  The method is not
registered yet (no search space, hypernet or proxy)."""
