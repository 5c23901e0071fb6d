"""Training algorithms: each supplies :class:`hone.training.hooks.AlgorithmHooks` for the one trainer.

Which class implements which algorithm is written once, in the table of :mod:`hone.config`
(:data:`hone.config.ALGORITHMS`); this module only builds the hooks it names.
"""
from __future__ import annotations

import importlib

from hone.config import RunConfig, get_algorithm
from hone.errors import HoneError
from hone.training.hooks import AlgorithmHooks


def hooks_class(algorithm: str) -> type[AlgorithmHooks]:
    """The hooks class the algorithm table names for ``algorithm``."""
    spec = get_algorithm(algorithm)
    module_name, _, class_name = spec.hooks.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise HoneError(f"algorithm {algorithm!r}: cannot load its hooks {spec.hooks!r} ({err})",
                        where="hone.config.ALGORITHMS", fix="register the algorithm with 'module:Class' of an "
                        "AlgorithmHooks subclass") from None
    if not (isinstance(cls, type) and issubclass(cls, AlgorithmHooks)):
        raise HoneError(f"algorithm {algorithm!r}: {spec.hooks} is not an AlgorithmHooks subclass",
                        where="hone.config.ALGORITHMS", fix="subclass hone.training.hooks.AlgorithmHooks")
    return cls


def hooks_for(cfg: RunConfig) -> AlgorithmHooks:
    """The hooks implementing ``cfg.algorithm``, built from the resolved configuration."""
    return hooks_class(cfg.algorithm).from_config(cfg)
