"""Run configuration: the generic settings every method shares, a method's
own settings beside them, presets, and the checks that refuse bad values.

A run's settings are one ``RunConfig``: the generic fields below (data,
proxy training, scoring, retraining, execution) and ``settings``, an instance
of the chosen method's own settings dataclass (``registry.Method.settings``:
for one-shot its search space and path dropout).  Both are dataclasses whose
fields are declared with ``setting(...)``: a default, a help string (the
binaries' ``--helpfull``), bounds or choices that ``validate`` enforces, and
whether the field is part of a model directory's identity.  Flags are flat:
``--num_cells`` sets the one-shot settings' field, ``--train_steps`` the
generic one; a method's field names may not shadow generic ones.

Resolution: generic defaults, then the method's own defaults of generic
fields (``Method.defaults``, e.g. a method trained with Adam), then the
method's preset (``Method.presets``: ``quick``, ``tiny``, ``paper``, each
the method's own values), then explicit overrides.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple


#: The names of the generic choices, written once: the modules that
#: implement them (training, scoring, precision) import them from here, so
#: this module (and flag definition) needs no TensorFlow.
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant", "cosine_floor", "step")
RANKINGS = ("top", "small")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def setting(default, help: str, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
            choices: Optional[Sequence[str]] = None, identity: bool = True, tristate: bool = False):
    """A dataclass field of a settings class.

    ``low``/``high`` bound a number (inclusive unless ``low_open``/
    ``high_open``); ``choices`` lists a string's values; ``identity`` says
    whether a model directory must keep the value (a step run later on the
    same directory must agree on it); ``tristate`` marks a bool that may be
    left unset (``None``)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
        "choices": tuple(choices) if choices is not None else None, "identity": identity,
        "tristate": tristate})


def fields(settings_class) -> Tuple[dataclasses.Field, ...]:
    """The declared settings of a settings dataclass (``setting`` fields)."""
    return tuple(f for f in dataclasses.fields(settings_class) if "help" in f.metadata)


@dataclasses.dataclass
class RunConfig:
    """Every generic setting of a run, plus the method's own ``settings``.

    ``experiments`` flags map 1:1 onto the fields of both."""

    method: str = setting("", "Search method (a registered plug-in; see --helpfull for its own flags). "
                              "Empty: the default method.", identity=True)
    preset: str = setting("quick", "Preset of defaults, the method's own values: quick, tiny or paper; "
                                   "explicit flags override it.", identity=False)
    # data
    dataset: str = setting("digits", "digits (embedded, no network), a tfds name (cifar10, cifar100, ...), or "
                                     "npz:PATH (keys x_train, y_train, optional x_test, y_test).")
    data_dir: str = setting("", "tfds data directory holding prepared datasets (tfds build NAME --data_dir=DIR).",
                            identity=False)
    image_size: int = setting(0, "Resize images to this square size (0: keep the dataset's size).", low=0)
    validation_size: float = setting(0.0, "Validation examples carved from the training set (count, or fraction "
                                          "< 1; 0: default).", low=0.0)
    max_train_examples: int = setting(0, "Use at most this many training examples (0: all).", low=0)
    seed: int = setting(0, "Seed of data splits, initialization, the proxy's randomness, augmentation and "
                           "candidate sampling.", low=0)
    # proxy training
    train_steps: int = setting(1000, "Proxy training steps.", low=1)
    batch_size: int = setting(64, "Global batch size of proxy training.", low=1)
    optimizer: str = setting("sgd", "Optimizer of proxy training: sgd (momentum 0.9, Nesterov) or adam.",
                             choices=OPTIMIZERS)
    adam_beta_1: float = setting(0.9, "For --optimizer=adam: the decay rate of the first-moment estimate "
                                      "(beta_1; Keras' default 0.9, SMASH's reference code DCGAN's 0.5).",
                                 low=0.0, high=1.0, high_open=True)
    adam_epsilon: float = setting(1e-7, "For --optimizer=adam: the epsilon added to the second-moment root "
                                        "(Keras' default 1e-7, SMASH's reference code 1e-4).",
                                  low=0.0, low_open=True)
    learning_rate: float = setting(0.1, "Initial learning rate of proxy training (schedule: --lr_schedule).",
                                   low=0.0, low_open=True)
    lr_schedule: str = setting("cosine", "Learning-rate schedule of proxy training: cosine (decay to 0), "
                                         "constant, cosine_floor (cosine decay to --lr_floor x --learning_rate) "
                                         "or step (x --lr_decay_factor at each fraction of --lr_decay_at). "
                                         "Stand-alone retraining always uses cosine.",
                               choices=LR_SCHEDULES)
    lr_floor: float = setting(0.1, "For --lr_schedule=cosine_floor: the final learning rate as a fraction of "
                                   "--learning_rate, in (0, 1).", low=0.0, high=1.0, low_open=True, high_open=True)
    lr_decay_at: str = setting("0.5,0.75", "For --lr_schedule=step: comma-separated fractions of --train_steps "
                                           "at which the learning rate is multiplied by --lr_decay_factor.")
    lr_decay_factor: float = setting(0.5, "For --lr_schedule=step: the factor applied at each --lr_decay_at.",
                                     low=0.0, high=1.0, low_open=True, high_open=True)
    augment: bool = setting(True, "Random crop after 4-pixel padding (plus horizontal flips on natural images).")
    proxy_ensemble: int = setting(1, "Proxies trained with different seeds (DIR/proxy, DIR/proxy_1, ...); a "
                                     "candidate's scores are their mean (SMASH's ensemble of HyperNets, its "
                                     "Figure 5b), each member's kept as member_<i>_score.", low=1)
    # scoring
    search: str = setting("random", "How candidates are chosen: random (the papers' method), refine (SMASH's "
                                    "perturbation chain) or evolution (regularized evolution); keras-tuner "
                                    "searches in DIR/tuner.")
    num_candidates: int = setting(100, "Candidates to score (may grow when a search is resumed).", low=1,
                                  identity=False)
    candidates_per_pass: int = setting(8, "Candidates scored in one compiled pass (each on the same examples).",
                                       low=1, identity=False)
    score_examples: int = setting(0, "Validation examples used to score a candidate, the first ones (0: all; "
                                     "every one is counted, the last group being filled up with other "
                                     "validation images).", low=0)
    kl_examples: int = setting(64, "Unlabeled training examples for the symmetrized-KL score against the "
                                   "proxy's reference architectures, drawn at random (seeded) from the training "
                                   "split (0: off; a proxy without references gives no KL score).", low=0)
    # retraining
    num_winners: int = setting(2, "Best candidates to retrain stand-alone and export (may grow).", low=0,
                               identity=False)
    ranking: str = setting("top", "top: highest score; small: fewest parameters above the --small_percentile "
                                  "score.", choices=RANKINGS)
    small_percentile: float = setting(90.0, "Score percentile a candidate must reach for --ranking=small.",
                                      low=0.0, high=100.0)
    best_of: int = setting(0, "GHN Top-Best (the GHN paper's Table 2), for any method: train the --best_of "
                              "best-ranked candidates stand-alone for --best_of_steps each and retrain the "
                              "--num_winners best of them by validation accuracy (0: off; otherwise at least "
                              "--num_winners).", low=0)
    best_of_steps: int = setting(100, "Training steps of each short run of --best_of (SGD with Nesterov, "
                                      "cosine, the retraining settings, at the searched width).", low=1)
    retrain_width: float = setting(1.0, "Width multiplier of the retrained stand-alone models over the "
                                        "searched space (space.widened: for the cell space, F x this).",
                                   low=0.0, low_open=True)
    retrain_steps: int = setting(1000, "Training steps per stand-alone model.", low=1)
    retrain_batch_size: int = setting(64, "Batch size of stand-alone training.", low=1)
    retrain_learning_rate: float = setting(0.1, "Initial learning rate of stand-alone training (SGD with "
                                                "Nesterov momentum 0.9, cosine decay).", low=0.0, low_open=True)
    retrain_weight_decay: float = setting(1e-4, "L2 coefficient of stand-alone training.", low=0.0)
    bn_momentum: float = setting(0.9, "BN moving-average momentum of stand-alone models (suit it to "
                                      "--retrain_steps).", low=0.0, high=1.0, high_open=True)
    # execution
    strategy: str = setting("default", "tf.distribute strategy: default, mirrored, multi_worker_mirrored, "
                                       "tpu, one_device.", identity=False)
    jit_compile: Optional[bool] = setting(None, "Compile the training and scoring steps with XLA. Unset: on "
                                                "for TPU, off otherwise (on CPU measured ~25x slower, "
                                                "benchmark (d)).", identity=False, tristate=True)
    precision: str = setting("float32", "float32, mixed_bfloat16 (TPU) or mixed_float16 (GPU, with dynamic "
                                        "loss scaling); BN statistics, normalizations, softmax and losses stay "
                                        "float32.", choices=PRECISIONS)
    intra_op_threads: int = setting(0, "TensorFlow's intra-op thread pool (0: its default, a thread per core). "
                                       "Set before TensorFlow starts (the binaries do). On a 2-core CPU one "
                                       "thread was faster for training and scoring (benchmarks/benchmark.py).",
                                    low=0, identity=False)
    deterministic: bool = setting(False, "Bitwise-repeatable runs on a given machine: TensorFlow's op "
                                         "determinism and one inter-op thread (TensorFlow's AddN rounds "
                                         "differently with concurrent ops). Slower: the quick preset's training "
                                         "step 1.7-1.8x on a 2-core CPU. Set before TensorFlow starts (the binaries "
                                         "do).", identity=False)
    checkpoint_every: int = setting(200, "Steps between checkpoints.", low=1, identity=False)
    log_every: int = setting(20, "Steps between TensorBoard/progress updates (and host reads of the step "
                                 "results).", low=1, identity=False)
    #: the method's own settings (an instance of ``registry.get(method).settings``)
    settings: Any = None

    # -- flat views ----------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """Every setting by flag name: the generic fields and the method's."""
        out = {f.name: getattr(self, f.name) for f in fields(RunConfig)}
        if self.settings is not None:
            out.update(dataclasses.asdict(self.settings))
        return out

    def identity(self) -> Dict[str, Any]:
        """The settings a model directory keeps: generic identity fields and
        every identity field of the method's settings."""
        out = {f.name: getattr(self, f.name) for f in fields(RunConfig) if f.metadata["identity"]}
        # a schedule's parameters count only under that schedule
        if self.lr_schedule != "cosine_floor":
            del out["lr_floor"]
        if self.lr_schedule != "step":
            del out["lr_decay_at"], out["lr_decay_factor"]
        # Adam's parameters count only under Adam, and at Keras' defaults not at all (a directory keeps its
        # identity from before the settings)
        for name, default in (("adam_beta_1", 0.9), ("adam_epsilon", 1e-7)):
            if self.optimizer != "adam" or out[name] == default:
                del out[name]
        if self.proxy_ensemble == 1:
            del out["proxy_ensemble"]  # a directory of one proxy keeps its identity from before the setting
        if self.settings is not None:
            out.update({f.name: getattr(self.settings, f.name) for f in fields(type(self.settings))
                        if f.metadata["identity"]})
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        """The config of a flat dict (``to_dict``'s layout, e.g. config.json's
        ``flags``); its ``method`` picks the settings class."""
        from oneshot_tf import registry
        method = registry.get(d.get("method") or "")
        return _assemble(method, dict(d))

    def lr_decay_fractions(self) -> Tuple[float, ...]:
        return parse_fractions(self.lr_decay_at, "--lr_decay_at")


def parse_fractions(text: str, flag: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0.0 < v < 1.0 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"{flag}={text!r} must be increasing fractions in (0, 1), e.g. 0.5,0.75")
    return values


def _assemble(method, values: Dict[str, Any]) -> RunConfig:
    generic = {f.name for f in fields(RunConfig)}
    own = {f.name for f in fields(method.settings)}
    unknown = set(values) - generic - own - {"settings"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} for method {method.name!r} (its own settings: "
                         f"{', '.join(sorted(own)) or 'none'})")
    values.pop("settings", None)
    settings = method.settings(**{k: v for k, v in values.items() if k in own})
    cfg = RunConfig(**{k: v for k, v in values.items() if k in generic})
    cfg.method, cfg.settings = method.name, settings
    return cfg


def resolve(preset: str, overrides: Dict[str, Any], method: Optional[str] = None) -> RunConfig:
    """Defaults, the method's defaults, its preset, then explicit overrides
    (flat: generic and method settings by name).  ``method`` (or
    ``overrides["method"]``; neither: the registry's default method)."""
    from oneshot_tf import registry
    m = registry.get(method or overrides.get("method") or "")
    if preset not in m.presets:
        raise ValueError(f"unknown preset {preset!r} for method {m.name!r}; choose from {sorted(m.presets)}")
    values = {**m.defaults, **m.presets[preset], **overrides, "preset": preset, "method": m.name}
    return _assemble(m, values)


def identity_diff(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """The identity settings that differ between two ``RunConfig.identity()`` dicts."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_fields(obj) -> None:
    """Refuse a settings dataclass's values out of their declared bounds or
    choices, naming the flag."""
    for f in fields(type(obj)):
        value, meta = getattr(obj, f.name), f.metadata
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ValueError(f"unknown --{f.name}={value!r}; choose from {', '.join(meta['choices'])}")
            continue
        if meta["low"] is None and meta["high"] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"--{f.name}={value!r} is not a number")
        low, high = meta["low"], meta["high"]
        below = low is not None and (value <= low if meta["low_open"] else value < low)
        above = high is not None and (value >= high if meta["high_open"] else value > high)
        if below or above:
            if high is None:
                bound = f"{'>' if meta['low_open'] else '>='} {low}"
            elif low is None:
                bound = f"{'<' if meta['high_open'] else '<='} {high}"
            else:
                bound = (f"{'(' if meta['low_open'] else '['}{low}, {high}{')' if meta['high_open'] else ']'}")
            raise ValueError(f"--{f.name}={value!r} is out of range: it must be {bound}")


def validate(cfg: RunConfig) -> RunConfig:
    """Refuse settings out of range, naming the flag, before any work starts:
    the generic fields, then the method's (``check_fields`` and the settings'
    own ``check()``, if it has one, for relations between its fields)."""
    check_fields(cfg)
    if cfg.best_of and cfg.best_of < cfg.num_winners:
        raise ValueError(f"--best_of={cfg.best_of} must be 0 (off) or at least --num_winners={cfg.num_winners}")
    if cfg.lr_schedule == "step":
        cfg.lr_decay_fractions()
    if cfg.settings is not None:
        check_fields(cfg.settings)
        check = getattr(cfg.settings, "check", None)
        if check is not None:
            check()
    return cfg
