"""Graph HyperNetworks (Zhang et al., *Graph HyperNetworks for Neural
Architecture Search*, ICLR 2019): a graph network over a candidate's
computation graph, and a hypernet that turns every node's embedding into
that node's parameters, trained on a fresh random architecture every step;
a candidate's score is its accuracy with the generated weights.

* ``gnn``: the graph network (GRU updates from MLP messages over padded
  DAGs; forward-backward level by level, or synchronous);
* ``network_graph``: an architecture's whole network as a padded graph;
* ``hypernet``: the shared MLP with one output branch per kind of parameter;
* ``proxy``: ``GHNProxy``, trained and scored through the package's one
  training loop and scorer.

* ``dag_space``, ``dag_models``, ``dag_network``: the paper's own search
  space (appendix 7.1: blocks of N nodes over nine operators), its
  stand-alone models and executor, and its network graph.

Registers as ``ghn``.  Search spaces: ``--space=dag`` (the default, the
paper's) and ``--space=cell`` (the one-shot method's cell space, so GHN and
one-shot score the same candidates).
"""

from __future__ import annotations

import dataclasses

from oneshot_tf import registry
from oneshot_tf.config import setting
from oneshot_tf.methods.oneshot import CellSpaceSettings

SPACES = ("dag", "cell")


@dataclasses.dataclass
class GHNSettings(CellSpaceSettings):
    """The searched space (the cell space's settings) and the GHN's own."""

    space: str = setting("dag", "Search space: dag (the GHN paper's, appendix 7.1: one block of --num_nodes "
                                "operator nodes, each summing one of nine operators over 1 to --max_inputs "
                                "inputs, repeated in --num_cells blocks over --num_stages stages at --filters "
                                "channels) or cell (the one-shot method's cell space, --num_cells, --num_stages, "
                                "--filters, --num_blocks: the same candidates as --method=oneshot).",
                         choices=SPACES)
    num_nodes: int = setting(17, "--space=dag: N, operator nodes per block of the scored candidates (the paper: "
                                 "17).", low=1)
    train_nodes: int = setting(7, "--space=dag: nodes per block of the architectures the GHN trains on (the "
                                  "paper: 7; fewer nodes trained better, section 5.4); at most --num_nodes.",
                               low=1)
    max_inputs: int = setting(2, "--space=dag: most inputs a node reads (each node draws 1 to this many).", low=1)
    group_size: int = setting(32, "Examples per batch-normalization group of a generated network (batch "
                                  "statistics with generated gamma/beta, in training and scoring); also the "
                                  "scoring group.", low=1)
    meta_batch: int = setting(1, "Architectures per training step (GHN-2's meta-batch; 1: the paper's), each on "
                                 "an equal share of the batch.", low=1)
    gnn_units: int = setting(32, "Node embedding size and GRU units of the graph network.", low=1)
    message_units: int = setting(32, "Units of the two-layer message MLP.", low=1)
    hypernet_units: int = setting(64, "Units of the two-layer hypernet MLP shared by all nodes.", low=1)
    propagation: str = setting("forward_backward", "Graph propagation: forward_backward (topological order, "
                                                   "then reverse, level by level) or synchronous.",
                               choices=("forward_backward", "synchronous"))
    passes: int = setting(1, "T: forward-backward passes.", low=1)
    sync_steps: int = setting(5, "Steps of --propagation=synchronous.", low=1)
    chunk_channels: int = setting(16, "Channels a hypernet branch generates; wider tensors tile them (GHN-2).",
                                  low=1)
    virtual_edges: int = setting(0, "GHN-2's virtual edges: each node also hears the nodes up to this many hops "
                                    "before it (after it, backward) through a second message MLP, weighted "
                                    "1 / hops (0: off, the paper's; GHN-2 uses 50).", low=0)
    graph: str = setting("network", "How the graph network reads a candidate: network (the whole network, every "
                                    "cell unrolled, as one graph: GHN-2's) or stacked (the paper's stacked GHN, "
                                    "section 4.3: cell by cell, each cell's input nodes hearing the mean embedding "
                                    "of the cell before).", choices=("network", "stacked"))
    stack_share: bool = setting(True, "--graph=stacked: one GHN shared by every cell (the paper's) or one per cell "
                                      "(--nostack_share, Table 5's ablation).")
    stack_pass: bool = setting(True, "--graph=stacked: pass each cell's mean embedding to the next (the paper's); "
                                     "--nostack_pass: cells on their own (Table 5's ablation).")
    weight_normalization: str = setting("none", "Scale of generated kernels: none (the paper's raw outputs) or "
                                                "fan_in (GHN-2: x sqrt(2 / fan_in)); none ranked better in the "
                                                "quick fidelity study (README).",
                                        choices=("none", "fan_in"))


    def check(self):
        super().check()
        if self.space == "dag" and self.train_nodes > self.num_nodes:
            raise ValueError(f"--train_nodes={self.train_nodes} exceeds --num_nodes={self.num_nodes}: the GHN's "
                             f"graph holds blocks of at most --num_nodes nodes")

    def search_space(self):
        """The searched space: ``DagSearchSpace`` or the cell space."""
        if self.space == "cell":
            return self.cell_space()
        from hypernets.ghn.dag_space import DagSearchSpace
        return DagSearchSpace(num_nodes=self.num_nodes, max_inputs=self.max_inputs, num_blocks=self.num_cells,
                              num_stages=self.num_stages, filters=self.filters)


def build(cfg, dataset):
    """The searched space and the (untrained) GHN proxy of ``cfg.settings``."""
    from hypernets.ghn.proxy import GHNProxy
    s = cfg.settings
    space = s.search_space()
    train_space = space.with_nodes(s.train_nodes) if s.space == "dag" else None
    mean, std = dataset.channel_stats()
    proxy = GHNProxy(space, input_shape=dataset.image_shape, num_classes=dataset.num_classes, mean=mean, std=std,
                     group_size=s.group_size, meta_batch=s.meta_batch, units=s.gnn_units,
                     message_units=s.message_units, hypernet_units=s.hypernet_units, propagation=s.propagation,
                     passes=s.passes, steps=s.sync_steps, chunk_channels=s.chunk_channels,
                     normalization=s.weight_normalization, static_shapes=bool(cfg.jit_compile),
                     virtual_edges=s.virtual_edges, graph=s.graph, stack_share=s.stack_share,
                     stack_pass=s.stack_pass, train_space=train_space)
    return space, proxy


_QUICK_SPACE = dict(dataset="digits", image_size=16, validation_size=320, num_cells=3, num_stages=2, filters=8)

PRESETS = {
    # The whole pipeline on the embedded digits in minutes on 2 CPU cores:
    # the paper's block space at 3 blocks of 5 nodes (the GHN trains on 3),
    # or with --space=cell the one-shot quick preset's space and candidates.
    "quick": dict(**_QUICK_SPACE, num_nodes=5, train_nodes=3, train_steps=600, batch_size=64,
                  num_candidates=64, candidates_per_pass=8, num_winners=2, retrain_steps=200,
                  retrain_batch_size=64, retrain_learning_rate=0.05, bn_momentum=0.9, checkpoint_every=100,
                  log_every=50, intra_op_threads=1),
    # For tests: one block (cell), a few steps.
    "tiny": dict(dataset="digits", image_size=8, validation_size=64, num_cells=1, num_stages=1, filters=4,
                 num_blocks=2, num_nodes=3, train_nodes=2, train_steps=6, batch_size=32, num_candidates=6,
                 candidates_per_pass=4, kl_examples=0, num_winners=2, retrain_steps=6, retrain_batch_size=32,
                 checkpoint_every=3, log_every=2),
    # The paper's CIFAR-10 settings (sections 5.1.1 and 5.4, appendices 7.1
    # to 7.3): 18 blocks of 17 nodes, reductions after blocks 6 and 12, F=32
    # (Table 1's GHN Top), the GHN trained on blocks of 7 nodes with T = 5
    # forward-backward passes for 200 epochs of 45k images at batch 64
    # (140,625 steps), Adam 1e-3 halved at epochs 100 and 150; 1000
    # candidates, the top 10 retrained (the paper: 600 epochs, lr 0.025
    # with cosine, batch 64; here 300 epochs at batch 128).
    "paper": dict(dataset="cifar10", image_size=0, num_cells=18, num_stages=3, filters=32, num_nodes=17,
                  train_nodes=7, train_steps=140625, batch_size=64, passes=5, num_candidates=1000,
                  candidates_per_pass=8, num_winners=10, retrain_steps=105469, retrain_batch_size=128,
                  retrain_learning_rate=0.05, retrain_weight_decay=1e-4, bn_momentum=0.99, checkpoint_every=1000,
                  log_every=100),
}

METHOD = registry.register(registry.Method(
    name="ghn", description="Graph HyperNetwork (Zhang et al., ICLR 2019)", settings=GHNSettings, build=build,
    presets=PRESETS,
    variants={"cell space": {"space": "cell"}},
    defaults=dict(optimizer="adam", learning_rate=1e-3, lr_schedule="step", lr_decay_at="0.5,0.75",
                  lr_decay_factor=0.5, kl_examples=0)))
