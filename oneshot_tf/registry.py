"""The method registry: every search method is a plug-in that registers here.

A method is one folder (``oneshot_tf/methods/<name>/`` for the methods that
ship with the package, ``hypernets/<name>/`` for the hypernetwork methods, or
any importable package of a user's) whose ``__init__`` calls
``register(Method(...))`` with:

* ``settings``: a dataclass of the method's own settings, each field declared
  with ``config.setting`` (default, help, bounds); the binaries turn them
  into flags (``--method=NAME --helpfull`` lists them), ``config.validate``
  checks them, and every identity field is kept by a model directory;
* ``build(cfg, dataset) -> (space, proxy)``: the search space and the
  (untrained) proxy of a ``config.RunConfig`` whose ``settings`` are the
  method's, for an ``data.ImageDataset``;
* ``presets``: ``quick``, ``tiny`` and ``paper`` at least, each a dict of
  generic and own settings meaning this method's values;
* ``defaults``: the method's defaults for generic settings (e.g. its
  optimizer), applied before a preset.

Methods are found by importing every subpackage of ``oneshot_tf.methods`` and
``hypernets``, and every module named by an ``oneshot_tf.methods`` entry point
(a third-party package's ``setup.cfg``: ``[options.entry_points]
oneshot_tf.methods = mymethod = mypackage.mymethod``).  Nothing else in the
package names a method: the pipeline, scoring, the tuner, retraining and the
binaries ask the registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import pkgutil
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

#: Packages whose subpackages are methods (imported on first lookup).
METHOD_PACKAGES = ("oneshot_tf.methods", "hypernets")
#: Entry-point group through which other packages add methods.
ENTRY_POINT_GROUP = "oneshot_tf.methods"
#: Presets every method defines.
REQUIRED_PRESETS = ("quick", "tiny", "paper")


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered search method (see the module docstring)."""

    name: str
    description: str
    settings: type
    build: Callable[[Any, Any], Tuple[Any, Any]]
    presets: Mapping[str, Mapping[str, Any]]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: the method used when ``--method`` is not given (exactly one built-in has it)
    default: bool = False
    #: named setting overrides (e.g. another search space) the method's contract tests also run under
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


_METHODS: Dict[str, Method] = {}
_loaded = False


def register(method: Method) -> Method:
    """Add ``method``; its settings may not shadow generic settings, and its
    presets name only known settings.  Registering the same name again
    replaces the entry only if it is the same method (a module imported
    twice); otherwise ``ValueError``."""
    from oneshot_tf import config as config_lib
    if not method.name or not method.name.replace("_", "").isalnum():
        raise ValueError(f"method name {method.name!r} must be a non-empty identifier")
    if not dataclasses.is_dataclass(method.settings):
        raise ValueError(f"method {method.name!r}: settings must be a dataclass, got {method.settings!r}")
    generic = {f.name for f in config_lib.fields(config_lib.RunConfig)} | {"settings"}
    own = {f.name for f in dataclasses.fields(method.settings)}
    undeclared = sorted(own - {f.name for f in config_lib.fields(method.settings)})
    if undeclared:
        raise ValueError(f"method {method.name!r}: settings {undeclared} are not declared with config.setting "
                         f"(each needs a help string)")
    clash = sorted(own & generic)
    if clash:
        raise ValueError(f"method {method.name!r}: settings {clash} shadow generic settings")
    missing = [p for p in REQUIRED_PRESETS if p not in method.presets]
    if missing:
        raise ValueError(f"method {method.name!r}: presets {missing} missing (every method defines "
                         f"{', '.join(REQUIRED_PRESETS)})")
    for where, values in ([("defaults", method.defaults)] + [(f"preset {p!r}", v) for p, v in method.presets.items()]
                          + [(f"variant {v!r}", o) for v, o in method.variants.items()]):
        bad = sorted(set(values) - generic - own)
        if bad:
            raise ValueError(f"method {method.name!r}: {where} sets unknown settings {bad}")
    old = _METHODS.get(method.name)
    same_build = old is not None and ((old.build.__module__, old.build.__qualname__)
                                       == (method.build.__module__, method.build.__qualname__))
    if old is not None and old != method and not same_build:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if method.default:
        others = [m.name for m in _METHODS.values() if m.default and m.name != method.name]
        if others:
            raise ValueError(f"method {method.name!r} and {others[0]!r} both claim to be the default")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register their own)."""
    _METHODS.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in METHOD_PACKAGES:
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError as e:
            if e.name != package:
                raise
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.ispkg:
                importlib.import_module(f"{package}.{info.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as e:  # a broken plug-in is named, not hidden
            raise ImportError(f"method plug-in {entry.name!r} ({entry.value}) failed to import: {e}") from e


def names() -> List[str]:
    """Names of every registered method, sorted."""
    _load()
    return sorted(_METHODS)


def contract_cases() -> List[Tuple[str, Dict[str, Any]]]:
    """``(method, overrides)`` for every registered method (no overrides)
    and each of its ``variants``: what the contract tests run."""
    out = []
    for name in names():
        out.append((name, {}))
        out.extend((name, dict(o)) for o in _METHODS[name].variants.values())
    return out


def get(name: Optional[str] = None) -> Method:
    """The method called ``name`` (empty or ``None``: the default method)."""
    _load()
    if not name:
        defaults = [m for m in _METHODS.values() if m.default]
        if not defaults:
            raise ValueError(f"no default method registered; pass --method (available: {', '.join(names())})")
        return defaults[0]
    if name not in _METHODS:
        raise ValueError(f"unknown --method={name!r}; available: {', '.join(names()) or 'none'}")
    return _METHODS[name]
