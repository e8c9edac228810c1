"""SMASH (Brock et al., *SMASH: One-Shot Model Architecture Search through
HyperNetworks*, ICLR 2018): a HyperNet generates the 1x1 convolutions of a
memory-bank network from an encoding of its architecture, trained on a fresh
random architecture every step; a candidate's score is its validation
accuracy with the generated weights.

* ``space``: the memory-bank search space (``MemoryBankSpace``, with the
  paper's ``smash_v1`` and ``smash_v2``): architectures as data, sampling with
  a per-block budget, validation, SMASH's perturbation, and the encoding
  tensor c of appendix B;
* ``models``: the resulting network (every weight free, BN-ReLU-Conv);
* ``network``: the SMASH network, every architecture padded and masked in
  one trace (memory tensor, generated 1x1s, learned slot convolutions);
* ``hypernet``: the HyperNet (a 26-layer DenseNet over c, simplified
  WeightNorm) and the channel-based weight compression that turns its output
  into every op's 1x1 kernel;
* ``proxy``: ``SmashProxy``, trained and scored through the package's one
  training loop and scorer.

Registers as ``smash``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from oneshot_tf import registry
from oneshot_tf.config import setting


def _ints(text: str, flag: str):
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{flag}={text!r} must be comma-separated integers") from None
    if not values:
        raise ValueError(f"--{flag} is empty")
    return values


@dataclasses.dataclass
class SmashSettings:
    """The memory-bank space's settings and the SMASH proxy's own (defaults:
    SMASHv2's choices at a small width)."""

    num_blocks: int = setting(3, "Blocks at successively halved resolutions.", low=1)
    filters: int = setting(32, "Channels entering block 0 (doubled every block by the transitions).", low=1)
    base: int = setting(8, "N: channels of the smallest memory bank; units, bank sizes and groups build on it.",
                        low=1)
    max_units: int = setting(64, "N_max: most output units of an op (a multiple of --base).", low=1)
    variable_banks: bool = setting(True, "Bank size drawn per block (multiples of --base up to --max_units, "
                                         "SMASHv2); --novariable_banks: always --base (SMASHv1).")
    depth_compression: int = setting(4, "D: input channels of one column of c are D * --base.", low=1)
    max_banks: int = setting(32, "M: banks of --base channels a block can hold (its capacity is M * --base "
                                 "channels); also c's read and write channels.", low=1)
    depth: int = setting(4, "A block's ops read at most (1 + depth) x its input channels in all (the "
                            "budget's bound).", low=1)
    op_kind: str = setting("2x2", "Convolutions of an op: 2x2 (Figure 2(a)'s patterns, SMASHv2) or single "
                                  "(one dilated 3x3, SMASHv1).", choices=("2x2", "single"))
    kernel_sizes: str = setting("3,5,7", "Kernel sizes a convolution draws per axis (comma-separated, odd).")
    max_dilation: int = setting(4, "Largest dilation.", low=1)
    max_extent: int = setting(9, "Largest spatial extent (k - 1) * d + 1 of a convolution.", low=1)
    groups: str = setting("1,2,4,8", "Group counts a convolution draws (comma-separated, dividing --base).")
    bottleneck: int = setting(2, "Most 1x1 output channels per op unit (SMASHv2: 2; SMASHv1: 4).", low=1)
    min_budget: float = setting(0.3, "Smallest fraction of a block's read budget an architecture uses.",
                                low=0.0, high=1.0, low_open=True)
    max_budget: float = setting(1.0, "Largest fraction of a block's read budget an architecture uses.",
                                low=0.0, high=1.0, low_open=True)
    group_size: int = setting(32, "Examples per batch-normalization group of the SMASH network (batch "
                                  "statistics, in training and scoring); also the scoring group.", low=1)
    weight_decay: float = setting(1e-4, "L2 coefficient of the SMASH network's freely learned weights (not "
                                        "the HyperNet's).", low=0.0)
    score_bn: str = setting("batch", "How a SMASH score normalizes: batch (each candidate's batch statistics per "
                                     "--group_size validation examples, as in training), running (the running "
                                     "statistics accumulated over training's random architectures, as the "
                                     "reference code evaluates), recomputed (statistics recomputed per candidate "
                                     "on --recompute_examples training images).", choices=("batch", "running",
                                                                                           "recomputed"))
    recompute_examples: int = setting(256, "--score_bn=recomputed: training images (a seeded draw) whose "
                                           "statistics every candidate is normalized with.", low=2)
    running_momentum: float = setting(0.9, "Momentum of the running BN statistics accumulated in training "
                                           "(--score_bn=running; 0.9: PyTorch's default, the reference code's).",
                                      low=0.0, high=1.0, high_open=True)
    growth: int = setting(10, "Growth rate of the HyperNet's dense blocks.", low=1)
    hypernet_blocks: str = setting("8,10,4", "Layers of each of the HyperNet's dense blocks (comma-separated).")

    def check(self):
        self.search_space()
        _ints(self.hypernet_blocks, "hypernet_blocks")

    def search_space(self):
        from hypernets.smash.space import MemoryBankSpace
        return MemoryBankSpace(num_blocks=self.num_blocks, filters=self.filters, base=self.base,
                               max_units=self.max_units, variable_banks=self.variable_banks,
                               depth_compression=self.depth_compression, max_banks=self.max_banks,
                               depth=self.depth, op_kind=self.op_kind,
                               kernel_sizes=_ints(self.kernel_sizes, "kernel_sizes"),
                               max_dilation=self.max_dilation, max_extent=self.max_extent,
                               groups=_ints(self.groups, "groups"), bottleneck=self.bottleneck,
                               min_budget=self.min_budget, max_budget=self.max_budget)


def build(cfg, dataset):
    """The memory-bank space and the (untrained) SMASH proxy of ``cfg.settings``."""
    from hypernets.smash.proxy import SmashProxy
    s = cfg.settings
    space = s.search_space()
    mean, std = dataset.channel_stats()
    calibration = None
    if s.score_bn == "recomputed":
        n = min(s.recompute_examples, len(dataset.x_train))
        calibration = dataset.x_train[np.random.default_rng([cfg.seed, 3]).choice(len(dataset.x_train), n,
                                                                                 replace=False)]
    proxy = SmashProxy(space, input_shape=dataset.image_shape, num_classes=dataset.num_classes, mean=mean,
                       std=std, group_size=s.group_size, weight_decay=s.weight_decay, growth=s.growth,
                       block_layers=_ints(s.hypernet_blocks, "hypernet_blocks"), score_bn=s.score_bn,
                       running_momentum=s.running_momentum, calibration_images=calibration,
                       static_shapes=bool(cfg.jit_compile))
    return space, proxy


_V1 = dict(base=6, max_units=42, variable_banks=False, depth_compression=3, op_kind="single", kernel_sizes="3",
           max_dilation=3, max_extent=7, groups="1", bottleneck=4)
_V2 = dict(base=8, max_units=64, variable_banks=True, depth_compression=4, op_kind="2x2", kernel_sizes="3,5,7",
           max_dilation=4, max_extent=9, groups="1,2,4,8", bottleneck=2)
# The paper's CIFAR-100 runs (appendices A and C): 100 epochs of 45k images
# at batch 50 (90,000 steps), Adam, 500 random candidates, the refinement
# search (100 perturbations, a 100-step chain), the winner retrained 300
# epochs with Nesterov 0.1 and cosine.
_PAPER = dict(dataset="cifar100", image_size=0, num_blocks=3, train_steps=90000, batch_size=50, group_size=50,
              search="refine", num_candidates=700, candidates_per_pass=4, num_winners=1,
              retrain_steps=270000, retrain_batch_size=50, retrain_learning_rate=0.1, retrain_weight_decay=1e-4,
              bn_momentum=0.99, checkpoint_every=1000, log_every=100, depth=12)

PRESETS = {
    # The whole pipeline on the embedded digits in minutes on 2 CPU cores:
    # SMASHv2's kinds of choices at a small width (kernels 3 and 5, extent 5).
    "quick": dict(dataset="digits", image_size=16, validation_size=320, num_blocks=2, filters=16, base=8,
                  max_units=32, max_banks=8, depth=2, depth_compression=2, kernel_sizes="3,5", max_dilation=2,
                  max_extent=5, groups="1,2,4", bottleneck=2, hypernet_blocks="4,4,2", train_steps=600,
                  batch_size=64, num_candidates=64, candidates_per_pass=8, num_winners=2, retrain_steps=200,
                  retrain_batch_size=64, retrain_learning_rate=0.05, bn_momentum=0.9, checkpoint_every=100,
                  log_every=50, intra_op_threads=1),
    # For tests: one block, a few steps.
    "tiny": dict(dataset="digits", image_size=8, validation_size=64, num_blocks=1, filters=8, base=4,
                 max_units=8, max_banks=4, depth=1, depth_compression=2, kernel_sizes="3", max_dilation=2,
                 max_extent=5, groups="1,2", bottleneck=2, hypernet_blocks="1,1", growth=4, train_steps=6,
                 batch_size=32, num_candidates=6, candidates_per_pass=4, kl_examples=0, num_winners=2,
                 retrain_steps=6, retrain_batch_size=32, checkpoint_every=3, log_every=2),
    # SMASHv1 and SMASHv2 (appendix A; banks per block: the reference code's
    # widths, here M * N channels) on CIFAR-100; ``paper`` is SMASHv2.
    "paper_v1": dict(_PAPER, **_V1, filters=54, max_banks=240),
    "paper_v2": dict(_PAPER, **_V2, filters=64, max_banks=64),
    "paper": dict(_PAPER, **_V2, filters=64, max_banks=64),
}

METHOD = registry.register(registry.Method(
    name="smash", description="SMASH HyperNet over memory-bank architectures (Brock et al., ICLR 2018)",
    settings=SmashSettings, build=build, presets=PRESETS,
    # SMASHv1's single convolution is covered by tests/test_smash_*.py (the network against its reference);
    # no contract variant, to keep the unit suite's time
    # the reference code's Adam: DCGAN's beta_1 = 0.5 ("the initial parameters proposed by [25]"), eps 1e-4
    defaults=dict(optimizer="adam", learning_rate=1e-3, adam_beta_1=0.5, adam_epsilon=1e-4, lr_schedule="cosine",
                  kl_examples=0)))
