"""The GHN proxy: a graph hypernetwork trained on a fresh random architecture
every step, scoring candidates with the weights it generates for them.

The candidate network runs on the one-shot model of the same cell space
(``OneShotModel``), used as an executor only: its own variables are never
trained or saved; ``keras.Model.stateless_call`` runs it with the generated
tensors in their place (gradients flow through them into the hypernet and
the graph network), and its masks run the candidate's own inputs and ops
only (each under a ``tf.cond``, so nothing runs on an empty batch).  One
traced step serves every architecture: the architecture enters as the
graph's tensors (``network_graph.CellNetworkGraph.encode``).

Per step (``step_inputs``) the host draws ``meta_batch`` architectures from
the space's distribution with the step's seed (a resumed run draws the same)
and each trains on an equal share of the batch.  Batch normalization in the
generated network uses the statistics of each group of ``group_size``
examples, in training and in scoring alike (``hypernet`` module docstring).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from hypernets.ghn.gnn import PROPAGATIONS, GatedGraphNetwork, StackedGraphNetwork
from hypernets.ghn.hypernet import NORMALIZATIONS, ParamSpec, WeightGenerator
from hypernets.ghn.dag_models import DagExecutor
from hypernets.ghn.dag_network import DagNetworkGraph, dag_param_specs
from hypernets.ghn.dag_space import DagSearchSpace
from hypernets.ghn.network_graph import NODE_TYPES, CellNetworkGraph
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.oneshot_model import OneShotCell, OneShotModel
from oneshot_tf.proxy import PerCandidateProxy, map_candidates

#: How the graph network sees a candidate: the whole network as one graph
#: (GHN-2's), or the stacked GHN's modules one after another (section 4.3).
GRAPHS = ("network", "stacked")

_KINDS = {"gamma": "gamma", "beta": "beta", "depthwise_kernel": "depthwise", "bias": "bias"}


def param_specs(model: OneShotModel, graph: CellNetworkGraph) -> List[ParamSpec]:
    """A ``ParamSpec`` for every trainable variable of ``model`` (in
    ``model.trainable_variables`` order): which graph node generates it,
    through which branch (role), and how a chunk is fitted to it."""
    index = {v.path: k for k, v in enumerate(model.trainable_variables)}
    specs: Dict[int, ParamSpec] = {}

    def add(var, role, slot, edge=None):
        kind = _KINDS.get(var.name, "kernel")
        rank = len(var.shape)
        if kind == "bias":
            tile = ()
        elif rank == 1:
            tile = (0,)
        elif kind == "depthwise":
            tile = (2,)
        elif rank == 2:           # the logits layer: its input axis only (one column per class)
            tile = (0,)
        else:
            tile = (2, 3)
        k = index[var.path]
        specs[k] = ParamSpec(k, tuple(int(d) for d in var.shape), role, kind, slot, tile, edge)

    for p, (node, layer) in enumerate(zip(graph.plan, model.node_layers)):
        slot = graph.output_slot[p]
        if not isinstance(layer, OneShotCell):
            for sub in layer._sequence():
                for var in sub.trainable_weights:
                    add(var, f"{node.kind}/{var.name}", slot)
            continue
        c = graph.cell_plan.index(p)
        for i, block in enumerate(layer.blocks):
            conv = graph.conv_slot[c][i]
            for var in block.input_bn.trainable_weights:
                add(var, f"block_input/{var.name}", conv, (c, i, 0, block.candidates))
            for var in block.input_conv.trainable_weights:
                add(var, f"block_input/{var.name}", conv, (c, i, 2, block.candidates))
            for op in block.ops:
                group = "sep" if op.spec.separable else op.op
                op_slot = graph.op_slot[c][i][graph.space.ops.index(op.op)]
                for n, step in enumerate(op.steps):
                    for var in step.trainable_weights:
                        add(var, f"{group}/{n}/{var.name}", op_slot)
    missing = [v.path for k, v in enumerate(model.trainable_variables) if k not in specs]
    if missing:
        raise ValueError(f"no graph node generates {missing}")
    return [specs[k] for k in range(len(specs))]


class GraphHyperNetwork(keras.Model):
    """Node-type embeddings, the graph network and the hypernet: a batch of
    encoded graphs (``adjacency``, ``levels``, ``edge_source``) to one
    ``[B, *shape]`` tensor per ``ParamSpec``.

    ``node_modules`` (one module index per node) makes it the stacked GHN
    (``gnn.StackedGraphNetwork``, inputs ``module_levels`` and ``entry``
    too); with ``share=False`` each module has its own GHN (node-type
    embedding, graph network and hypernet, generating the parameters
    ``spec_modules`` assigns to the module): Table 5's individual GHNs."""

    def __init__(self, node_types, specs, edge_destinations, *, num_node_types: int = len(NODE_TYPES),
                 units: int = 32,
                 messages=(32, 32), hidden=(64, 64), propagation: str = "forward_backward", passes: int = 1,
                 steps: int = 5, chunk_channels: int = 16, normalization: str = "none",
                 static_shapes: bool = False, virtual_edges: bool = False, node_modules=None, share: bool = True,
                 pass_embeddings: bool = True, spec_modules=None, **kwargs):
        super().__init__(name=kwargs.pop("name", "ghn"), **kwargs)
        # static node types (one per slot), or None: the encodings carry them (``node_types`` [B, N])
        self.node_types = None if node_types is None else [int(t) for t in node_types]
        self.num_node_types = int(num_node_types)
        specs = [sp if isinstance(sp, ParamSpec) else ParamSpec.from_json(sp) for sp in specs]
        gnn_args = dict(propagation=propagation, passes=passes, steps=steps, static_shapes=static_shapes,
                        virtual_edges=virtual_edges)
        self.node_modules = None if node_modules is None else [int(m) for m in node_modules]
        if self.node_modules is None and not share:
            raise ValueError("share=False (a GHN per module) needs node_modules (the stacked GHN)")
        self.share = bool(share)
        self.pass_embeddings = bool(pass_embeddings)
        copies = 1 if self.share else max(self.node_modules) + 1
        if self.node_modules is None:
            self.gnn = GatedGraphNetwork(units, messages, name="graph_network", **gnn_args)
        else:
            if self.node_types is not None and len(self.node_modules) != len(self.node_types):
                raise ValueError(f"node_modules names {len(self.node_modules)} nodes, the graph has "
                                 f"{len(self.node_types)}")
            self.gnn = StackedGraphNetwork(self.node_modules, units, messages, share=self.share,
                                           pass_embeddings=self.pass_embeddings, name="stacked_graph_network",
                                           **gnn_args)
        if self.share:
            self.spec_modules = [0] * len(specs)
        else:
            if spec_modules is None or len(spec_modules) != len(specs):
                raise ValueError("a GHN per module needs spec_modules: the module of every generated tensor")
            self.spec_modules = [int(m) for m in spec_modules]
        embeddings, generators = [], []
        for i in range(copies):
            mine = [sp for sp, m in zip(specs, self.spec_modules) if m == i]
            if not mine:
                raise ValueError(f"module {i} generates no parameter")
            suffix = "" if self.share else f"_{i}"
            embeddings.append(keras.layers.Embedding(self.num_node_types, units,
                                                     name="node_type_embedding" + suffix))
            generators.append(WeightGenerator(mine, edge_destinations, hidden=hidden, chunk_channels=chunk_channels,
                                              normalization=normalization, name="hypernet" + suffix))
        if self.share:  # the attributes (and checkpoint layout) of the plain GHN
            self.embedding, self.generator = embeddings[0], generators[0]
        else:
            self.module_embeddings, self.module_generators = embeddings, generators
        self.specs = specs
        self.edge_destinations = [int(v) for v in edge_destinations]
        self._config = dict(units=units, messages=list(messages), hidden=list(hidden), propagation=propagation,
                            passes=passes, steps=steps, chunk_channels=chunk_channels, normalization=normalization,
                            static_shapes=static_shapes, virtual_edges=virtual_edges,
                            node_modules=self.node_modules, share=self.share, pass_embeddings=self.pass_embeddings,
                            spec_modules=None if self.share else self.spec_modules)

    def embeddings(self, inputs):
        """The final node embeddings ``[B, N, units]``."""
        adjacency = tf.convert_to_tensor(inputs["adjacency"])
        b = tf.shape(adjacency)[0]
        if self.node_types is None:
            types = tf.cast(inputs["node_types"], tf.int32)                            # [B, N]
        else:
            types = tf.constant(self.node_types, tf.int32)[None]                      # [1, N]
        if self.share:
            h0 = self.embedding(types)
        else:  # each node from its own module's embedding
            h0 = tf.stack([layer(types) for layer in self.module_embeddings], 2)       # [., N, M, D]
            pick = tf.one_hot(self.node_modules, len(self.module_embeddings), dtype=h0.dtype)
            h0 = tf.einsum("bnmd,nm->bnd", h0, pick)
        if self.node_types is not None:
            h0 = tf.tile(h0, [b, 1, 1])
        if self.node_modules is None:
            graph = [h0, adjacency, inputs["levels"]]
        else:
            graph = [h0, adjacency, inputs["module_levels"], inputs["entry"]]
        if self._config["virtual_edges"]:
            graph.append(inputs["virtual"])
        return self.gnn(graph)

    def call(self, inputs):
        h = self.embeddings(inputs)
        if self.share:
            return self.generator([h, inputs["edge_source"]])
        out = [None] * len(self.specs)
        for i, generator in enumerate(self.module_generators):
            index = [k for k, m in enumerate(self.spec_modules) if m == i]
            for k, value in zip(index, generator([h, inputs["edge_source"]])):
                out[k] = value
        return out

    def get_config(self):
        return {"name": self.name, "node_types": self.node_types, "num_node_types": self.num_node_types,
                "specs": [s.to_json() for s in self.specs],
                "edge_destinations": self.edge_destinations, **self._config}


class GHNProxy(PerCandidateProxy):
    """A graph hypernetwork over ``space`` (the one-shot cell space)."""

    def __init__(self, space: CellSearchSpace, *, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] = None, std: Sequence[float] = None, group_size: int = 32,
                 meta_batch: int = 1, units: int = 32, message_units: int = 32, hypernet_units: int = 64,
                 propagation: str = "forward_backward", passes: int = 1, steps: int = 5, chunk_channels: int = 16,
                 normalization: str = "none", bn_epsilon: float = 1e-3, static_shapes: bool = False,
                 virtual_edges: int = 0, graph: str = "network", stack_share: bool = True,
                 stack_pass: bool = True, train_space=None):
        if propagation not in PROPAGATIONS:
            raise ValueError(f"unknown --propagation={propagation!r}; choose from {', '.join(PROPAGATIONS)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown --weight_normalization={normalization!r}; choose from "
                             f"{', '.join(NORMALIZATIONS)}")
        for name, value in [("group_size", group_size), ("meta_batch", meta_batch), ("units", units),
                            ("message_units", message_units), ("hypernet_units", hypernet_units),
                            ("passes", passes), ("steps", steps), ("chunk_channels", chunk_channels)]:
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mean, self.std = mean, std
        self._group_size = int(group_size)
        self.meta_batch = int(meta_batch)
        self.units, self.message_units, self.hypernet_units = int(units), int(message_units), int(hypernet_units)
        self.propagation, self.passes, self.steps = propagation, int(passes), int(steps)
        self.chunk_channels, self.normalization = int(chunk_channels), normalization
        self.bn_epsilon = float(bn_epsilon)
        self.static_shapes = bool(static_shapes)
        if int(virtual_edges) < 0:
            raise ValueError(f"virtual_edges must be >= 0 (0: none), got {virtual_edges}")
        self.virtual_edges = int(virtual_edges)
        if graph not in GRAPHS:
            raise ValueError(f"unknown --graph={graph!r}; choose from {', '.join(GRAPHS)}")
        if graph != "stacked" and not (stack_share and stack_pass):
            raise ValueError("--stack_share and --stack_pass are options of --graph=stacked; "
                             f"--graph={graph} has no modules to stack")
        self.graph_kind, self.stack_share, self.stack_pass = graph, bool(stack_share), bool(stack_pass)
        if isinstance(space, DagSearchSpace):
            graph_class = DagNetworkGraph
        elif isinstance(space, CellSearchSpace):
            graph_class = CellNetworkGraph
        else:
            raise ValueError(f"the GHN has no graph for the {space.name or type(space).__name__} search space")
        self.graph = graph_class(space, self.input_shape, virtual_edges=self.virtual_edges,
                                 stacked=graph == "stacked")
        if train_space is not None:
            if not isinstance(space, DagSearchSpace) or train_space.get_config() != space.with_nodes(
                    train_space.num_nodes).get_config() or train_space.num_nodes > space.num_nodes:
                raise ValueError("a training space must be the searched block space with at most as many nodes")
        self.train_space = train_space or space
        self.model = None
        self.executor = None

    @property
    def group_size(self) -> int:
        return self._group_size

    def get_config(self) -> Dict[str, Any]:
        """What the proxy computes (a model directory keeps it); how
        (``static_shapes``: the same values) is left out."""
        return {"group_size": self._group_size, "meta_batch": self.meta_batch, "units": self.units,
                "message_units": self.message_units, "hypernet_units": self.hypernet_units,
                "propagation": self.propagation, "passes": self.passes,
                "steps": self.steps if self.propagation == "synchronous" else None,
                "chunk_channels": self.chunk_channels, "normalization": self.normalization,
                "bn_epsilon": self.bn_epsilon, "graph": self.graph_kind, "virtual_edges": self.virtual_edges,
                **({"stack_share": self.stack_share, "stack_pass": self.stack_pass}
                   if self.graph_kind == "stacked" else {})}

    def validate_batch(self, batch_size: int, num_replicas: int) -> None:
        unit = num_replicas * self.meta_batch * self._group_size
        if batch_size % unit:
            raise ValueError(f"--batch_size={batch_size} must be a multiple of replicas ({num_replicas}) x "
                             f"--meta_batch ({self.meta_batch}) x --group_size ({self._group_size}): every "
                             f"architecture of a step trains on whole groups on every replica")

    # -- model -------------------------------------------------------------
    def build(self) -> None:
        if self.model is not None:
            return
        g = self.graph
        executor_class = DagExecutor if isinstance(g, DagNetworkGraph) else OneShotModel
        self.executor = executor_class(self.space, input_shape=self.input_shape, num_classes=self.num_classes,
                                       mean=self.mean, std=self.std, bn_epsilon=self.bn_epsilon,
                                       static_shapes=self.static_shapes, name="ghn_network").build_weights()
        self.executor.trainable = True
        specs = dag_param_specs(self.executor, g) if isinstance(g, DagNetworkGraph) else param_specs(self.executor, g)
        destinations = g.edge_destinations()
        stacking = {}
        if self.graph_kind == "stacked":
            modules = g.slot_modules()
            stacking = dict(node_modules=modules, share=self.stack_share, pass_embeddings=self.stack_pass,
                            spec_modules=[modules[sp.slot] for sp in specs])
        self.model = GraphHyperNetwork(
            g.static_node_types(), specs, destinations, num_node_types=len(g.node_type_names), units=self.units, messages=(self.message_units,) * 2,
            hidden=(self.hypernet_units,) * 2, propagation=self.propagation, passes=self.passes, steps=self.steps,
            chunk_channels=self.chunk_channels, normalization=self.normalization,
            static_shapes=self.static_shapes, virtual_edges=bool(self.virtual_edges), **stacking)
        self.model(self._stack([self.encode(self.space.sample(np.random.default_rng(0)))]))

    def encode(self, arch) -> Dict[str, np.ndarray]:
        """The graph of ``arch``'s whole network (``CellNetworkGraph.encode``,
        ``DagNetworkGraph.encode``)."""
        return self.graph.encode(arch)

    def generate(self, encodings: Mapping[str, tf.Tensor]) -> List[tf.Tensor]:
        """Every parameter of the executor for a batch of encodings: one
        ``[B, *variable.shape]`` tensor per trainable variable."""
        return self.model(encodings)

    def network_logits(self, values: Sequence[tf.Tensor], images, encodings, index: int, num_ghost: int):
        """Candidate ``index`` of ``encodings`` (its executor inputs: the
        cell space's masks, the block space's ops, adjacency and leaves) with
        parameters ``values`` (one per executor variable) on ``images``,
        batch statistics per group of ``images / num_ghost`` examples."""
        arch = {k: encodings[k][index] for k in self.graph.executor_keys}
        logits, _ = self.executor.stateless_call(list(values), [], {"images": images, **arch},
                                                 num_ghost=int(num_ghost))
        return tf.cast(logits, tf.float32)

    # -- training ----------------------------------------------------------
    def step_inputs(self, step: int, *, seed, progress: float, global_batch_size: int):
        """``meta_batch`` architectures drawn from the space with the step's
        seed, encoded and stacked (every replica trains them all)."""
        del step, progress, global_batch_size
        rng = np.random.default_rng([int(s) & 0xFFFFFFFF for s in np.asarray(seed).ravel()])
        return self._stack([self.encode(self.train_space.sample(rng)) for _ in range(self.meta_batch)])

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0,
             step_inputs=None):
        del progress, seed, replica_id
        if step_inputs is None:
            raise ValueError("the GHN trains on the architectures of step_inputs; none were given")
        n = int(images.shape[0])
        part = n // self.meta_batch
        if part * self.meta_batch != n or part % self._group_size:
            raise ValueError(f"a replica batch of {n} does not split into {self.meta_batch} architectures of "
                             f"whole groups of {self._group_size}")
        weights = self.generate(step_inputs)
        logits = []
        for m in range(self.meta_batch):
            logits.append(self.network_logits([w[m] for w in weights], images[m * part:(m + 1) * part],
                                              step_inputs, m, part // self._group_size))
        logits = tf.concat(logits, 0)
        labels = tf.cast(labels, tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        ce = ce / global_batch_size
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        del num_replicas
        return ce, {"cross_entropy": ce, "accuracy": correct / global_batch_size}

    # -- scoring -----------------------------------------------------------
    def per_candidate(self, images, encodings, num_ghost: int, shared_images: bool):
        """The GHN generates every candidate's weights in one pass, then each
        candidate's network runs in an in-graph loop."""
        weights = self.generate(encodings)
        k = int(encodings["adjacency"].shape[0])

        def one(k_):
            values = [w[k_] for w in weights]
            im = images if shared_images else images[k_]
            return self.network_logits(values, im, encodings, k_, num_ghost)

        return map_candidates(one, k)
