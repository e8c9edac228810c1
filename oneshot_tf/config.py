"""Run configuration: one flat dataclass, presets, and the methods registry."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

#: Fields that define what a model directory holds; a step run later on the
#: same directory must agree on them.
IDENTITY_FIELDS = (
    "method", "dataset", "image_size", "validation_size", "max_train_examples", "seed",
    "num_cells", "num_stages", "filters", "num_blocks",
    "ghost_batch_size", "drop_rate", "weight_decay", "train_steps", "batch_size", "learning_rate",
    "lr_schedule", "lr_floor", "kl_reference",
    "augment", "score_examples", "kl_examples", "precision",
    # which candidates are scored, and which winners are retrained how: a
    # finished winners/<rank>/ is kept, so these must not change under it
    "search", "ranking", "small_percentile", "retrain_filters", "retrain_steps", "retrain_batch_size",
    "retrain_learning_rate", "retrain_weight_decay", "bn_momentum",
)


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run; ``experiments`` flags map 1:1 onto fields."""

    method: str = "oneshot"
    preset: str = "quick"
    # data
    dataset: str = "digits"
    data_dir: str = ""
    image_size: int = 0                 # 0: the dataset's own size
    validation_size: float = 0.0        # 0: the dataset's default split
    max_train_examples: int = 0         # 0: all
    seed: int = 0
    # search space
    num_cells: int = 6
    num_stages: int = 3
    filters: int = 16
    num_blocks: int = 4
    # proxy training
    ghost_batch_size: int = 32
    drop_rate: float = 0.1
    weight_decay: float = 1e-4
    train_steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 0.1
    lr_schedule: str = "cosine"         # cosine | constant | cosine_floor (proxy training only)
    lr_floor: float = 0.1               # cosine_floor: final lr as a fraction of learning_rate
    augment: bool = True
    # scoring
    search: str = "random"
    num_candidates: int = 100
    candidates_per_pass: int = 8
    score_examples: int = 0             # validation examples used for scoring (0: all)
    kl_examples: int = 64
    kl_reference: str = "dropout"       # dropout (paper: nearly-all-on architectures, r=1e-8) | all_on
    # retraining
    num_winners: int = 2
    ranking: str = "top"                # top | small
    small_percentile: float = 90.0
    retrain_filters: int = 0            # 0: same F as the search
    retrain_steps: int = 1000
    retrain_batch_size: int = 64
    retrain_learning_rate: float = 0.1
    retrain_weight_decay: float = 1e-4
    bn_momentum: float = 0.9
    # execution
    strategy: str = "default"
    jit_compile: Optional[bool] = None  # None: per device (on for TPU; off on CPU, where it is slower)
    precision: str = "float32"          # float32 | mixed_bfloat16 | mixed_float16
    checkpoint_every: int = 200
    log_every: int = 20

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)


PRESETS: Dict[str, Dict[str, Any]] = {
    # A full search on the embedded digits in a few minutes on 2 CPU cores.
    "quick": dict(dataset="digits", image_size=16, validation_size=320, num_cells=3, num_stages=2,
                  filters=8, train_steps=600, batch_size=64, learning_rate=0.1,
                  num_candidates=64, candidates_per_pass=8, num_winners=2, retrain_steps=500,
                  retrain_batch_size=64, retrain_learning_rate=0.05, bn_momentum=0.9,
                  checkpoint_every=50, log_every=20),
    # For tests: seconds, not minutes.
    "tiny": dict(dataset="digits", image_size=8, validation_size=64, num_cells=2, num_stages=2,
                 filters=4, num_blocks=2, train_steps=6, batch_size=32, num_candidates=6,
                 candidates_per_pass=4, kl_examples=32, num_winners=2, retrain_steps=6,
                 retrain_batch_size=32, checkpoint_every=3, log_every=2),
    # The paper's CIFAR-10 settings (section 4.1): 6 cells, F=16 during the
    # search, 10,000 steps at a global batch of 1,024 (16 workers x 64) in
    # ghost batches of 32, lr 0.1 Nesterov, r=0.1 reached linearly; 20,000
    # candidates; winners retrained at F=64 for 300 epochs (45k images).
    "paper": dict(dataset="cifar10", image_size=0, num_cells=6, num_stages=3, filters=16,
                  train_steps=10000, batch_size=1024, ghost_batch_size=32, learning_rate=0.1,
                  drop_rate=0.1, num_candidates=20000, candidates_per_pass=32, num_winners=10,
                  retrain_filters=64, retrain_steps=105469, retrain_batch_size=128,
                  retrain_learning_rate=0.1, retrain_weight_decay=1e-4, bn_momentum=0.99,
                  checkpoint_every=1000, log_every=100),
}


def resolve(preset: str, overrides: Dict[str, Any]) -> RunConfig:
    """Defaults, then the preset, then explicit overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides, "preset": preset}
    return RunConfig.from_dict(values)


def identity_diff(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in IDENTITY_FIELDS if a.get(k) != b.get(k)}


#: Bounds of the numeric settings: field -> (low, high, low inclusive, high inclusive).
_BOUNDS = {
    "image_size": (0, None, True, None), "validation_size": (0, None, True, None),
    "max_train_examples": (0, None, True, None), "seed": (0, None, True, None),
    "num_cells": (1, None, True, None), "num_stages": (1, None, True, None),
    "filters": (1, None, True, None), "num_blocks": (1, None, True, None),
    "ghost_batch_size": (1, None, True, None), "drop_rate": (0.0, 1.0, False, False),
    "weight_decay": (0.0, None, True, None), "train_steps": (1, None, True, None),
    "batch_size": (1, None, True, None), "learning_rate": (0.0, None, False, None),
    "num_candidates": (1, None, True, None), "candidates_per_pass": (1, None, True, None),
    "score_examples": (0, None, True, None), "kl_examples": (0, None, True, None),
    "num_winners": (0, None, True, None), "small_percentile": (0.0, 100.0, True, True),
    "retrain_filters": (0, None, True, None), "retrain_steps": (1, None, True, None),
    "retrain_batch_size": (1, None, True, None), "retrain_learning_rate": (0.0, None, False, None),
    "retrain_weight_decay": (0.0, None, True, None), "bn_momentum": (0.0, 1.0, True, False),
    "checkpoint_every": (1, None, True, None), "log_every": (1, None, True, None),
}


def validate(cfg: RunConfig) -> RunConfig:
    """Refuse settings out of range, naming the flag, before any work starts."""
    for name, (low, high, low_in, high_in) in _BOUNDS.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"--{name}={value!r} is not a number")
        below = value < low if low_in else value <= low
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            bound = (f"{'>=' if low_in else '>'} {low}" if high is None
                     else f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}")
            raise ValueError(f"--{name}={value!r} is out of range: it must be {bound}")
    from oneshot_tf.training import LR_SCHEDULES
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown --lr_schedule={cfg.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    if cfg.lr_schedule == "cosine_floor" and not 0.0 < cfg.lr_floor < 1.0:
        raise ValueError(f"--lr_floor={cfg.lr_floor} must be in (0, 1) (a fraction of --learning_rate) "
                         f"for --lr_schedule=cosine_floor")
    if cfg.num_stages > cfg.num_cells:
        raise ValueError(f"--num_stages={cfg.num_stages} exceeds --num_cells={cfg.num_cells}: every stage "
                         f"needs a cell")
    return cfg
