"""The one-shot method of Bender et al., *Understanding and Simplifying
One-Shot Architecture Search* (ICML 2018): one model holds every op of the
cell space (``cell_space``); scheduled path dropout, ghost batch norm and
masked L2 (``proxy.OneShotProxy`` over ``oneshot_model.OneShotModel``) make its
accuracy with paths zeroed predict stand-alone accuracy.

Registers as ``oneshot`` (the default method); its own settings are
``OneShotSettings``.
"""

from __future__ import annotations

import dataclasses

from oneshot_tf import registry
from oneshot_tf.config import setting


@dataclasses.dataclass
class CellSpaceSettings:
    """The cell search space's settings (shared with methods that search the
    same space, such as GHN over ``--space=cell``)."""

    num_cells: int = setting(6, "Cells in the network.", low=1)
    num_stages: int = setting(3, "Stages; between stages a fixed reduction (BN-ReLU, 2x2 average pooling with "
                                 "stride 2, 1x1 convolution to twice the stage's filters) halves each of the two "
                                 "previous states.", low=1)
    filters: int = setting(16, "F: filters per choice block in the first stage (doubled every stage).", low=1)
    num_blocks: int = setting(4, "N_choice: choice blocks per cell.", low=1)

    def check(self):
        if self.num_stages > self.num_cells:
            raise ValueError(f"--num_stages={self.num_stages} exceeds --num_cells={self.num_cells}: every stage "
                             f"needs a cell")

    def cell_space(self):
        """The ``CellSearchSpace`` of these settings."""
        from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
        return CellSearchSpace(num_cells=self.num_cells, num_stages=self.num_stages, filters=self.filters,
                               num_blocks=self.num_blocks)


@dataclasses.dataclass
class OneShotSettings(CellSpaceSettings):
    """The cell search space and the one-shot proxy's own settings."""

    ghost_batch_size: int = setting(32, "Examples per ghost batch (own BN statistics and own path-dropout "
                                        "decisions); also the scoring group.", low=1)
    drop_rate: float = setting(0.1, "r: path-dropout coefficient; the final drop rate of a path is r**(1/k), k "
                                    "its fan-in.", low=0.0, high=1.0, low_open=True, high_open=True)
    weight_decay: float = setting(1e-4, "L2 coefficient of the one-shot model (applied only to paths in use).",
                                  low=0.0)
    kl_reference: str = setting("dropout", "What the KL score compares a candidate against: dropout (the "
                                           "paper's: nearly-all-on architectures sampled with path dropout at "
                                           "r=1e-8, one per group of KL examples, seeded) or all_on (every path "
                                           "on).", choices=("dropout", "all_on"))


def build(cfg, dataset):
    """The cell space and the one-shot proxy of ``cfg.settings``."""
    from oneshot_tf.methods.oneshot.proxy import OneShotProxy
    s = cfg.settings
    space = s.cell_space()
    mean, std = dataset.channel_stats()
    proxy = OneShotProxy(space, input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                         mean=mean, std=std, ghost_batch_size=s.ghost_batch_size, drop_rate=s.drop_rate,
                         weight_decay=s.weight_decay, static_shapes=bool(cfg.jit_compile),
                         kl_reference=s.kl_reference)
    return space, proxy


PRESETS = {
    # A full search on the embedded digits in a few minutes on 2 CPU cores.
    "quick": dict(dataset="digits", image_size=16, validation_size=320, num_cells=3, num_stages=2,
                  filters=8, train_steps=600, batch_size=64, learning_rate=0.1,
                  num_candidates=64, candidates_per_pass=8, num_winners=2, retrain_steps=500,
                  retrain_batch_size=64, retrain_learning_rate=0.05, bn_momentum=0.9,
                  checkpoint_every=50, log_every=20,
                  intra_op_threads=1),  # faster on 2 cores (README, Benchmarks)
    # For tests: seconds, not minutes (one cell: the trace of a step is most of a test's time).
    "tiny": dict(dataset="digits", image_size=8, validation_size=64, num_cells=1, num_stages=1,
                 filters=4, num_blocks=2, train_steps=6, batch_size=32, num_candidates=6,
                 candidates_per_pass=4, kl_examples=32, num_winners=2, retrain_steps=6,
                 retrain_batch_size=32, checkpoint_every=3, log_every=2),
    # The paper's CIFAR-10 settings (section 4.1): 6 cells, F=16 during the
    # search, 10,000 steps at a global batch of 1,024 (16 workers x 64) in
    # ghost batches of 32, lr 0.1 Nesterov, r=0.1 reached linearly; 20,000
    # candidates; winners retrained at F=64 (x4) for 300 epochs (45k images).
    "paper": dict(dataset="cifar10", image_size=0, num_cells=6, num_stages=3, filters=16,
                  train_steps=10000, batch_size=1024, ghost_batch_size=32, learning_rate=0.1,
                  drop_rate=0.1, num_candidates=20000, candidates_per_pass=32, num_winners=10,
                  retrain_width=4.0, retrain_steps=105469, retrain_batch_size=128,
                  retrain_learning_rate=0.1, retrain_weight_decay=1e-4, bn_momentum=0.99,
                  checkpoint_every=1000, log_every=100),
}

METHOD = registry.register(registry.Method(
    name="oneshot", description="One-shot model with scheduled path dropout (Bender et al., ICML 2018)",
    settings=OneShotSettings, build=build, presets=PRESETS,
    defaults=dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine"), default=True))
