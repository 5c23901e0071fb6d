"""Training Hub's programmatic surface over hone: the algorithm registry, ``create_algorithm``, the algorithm
and backend classes, and the memory estimator's ``estimate`` (with its estimator classes).

Everything is read from hone's table of algorithms (:data:`hone.config.ALGORITHMS`): an algorithm's Training Hub
name is its public function (``sft``, ``osft``, ``lora_sft``; ``Algorithm.api``), its backends are Training Hub's
backend names for it (``Algorithm.backends``: instructlab-training, mini-trainer, unsloth). Every backend trains
with hone's own engine (:func:`hone.api.train`); the name is accepted so that Training Hub code runs unchanged.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from hone.api import train as _train
from hone.config import ALGORITHMS, Algorithm as AlgorithmSpec, RunConfig, get_algorithm
from hone.errors import HoneError, suggest
from hone.models.estimate import MemoryEstimate, estimate_memory
from hone.training.run import TrainResult

# -- the registry ------------------------------------------------------------------------------------------


def _hub_name(spec: AlgorithmSpec) -> str:
    return spec.api or spec.name


def _spec(name: str) -> AlgorithmSpec:
    """The table entry for a Training Hub name (``lora_sft``) or a hone name (``lora``)."""
    for spec in ALGORITHMS.values():
        if name in (_hub_name(spec), spec.name):
            return spec
    return get_algorithm(name, where="algorithm_name")  # raises with the valid names


class Algorithm(ABC):
    """Base class of Training Hub algorithms: ``train(**kwargs)`` and the parameter tables."""

    @abstractmethod
    def train(self, **kwargs: Any) -> Any: ...

    @abstractmethod
    def get_required_params(self) -> dict[str, Any]: ...

    @abstractmethod
    def get_optional_params(self) -> dict[str, Any]: ...


class Backend(ABC):
    """Base class of Training Hub backends: ``execute_training(params)``."""

    @abstractmethod
    def execute_training(self, algorithm_params: dict[str, Any]) -> Any: ...


class HoneBackend(Backend):
    """hone's engine, registered under a Training Hub backend name of one algorithm."""

    algorithm: ClassVar[str] = ""       # hone's algorithm name
    backend_name: ClassVar[str] = ""    # Training Hub's backend name

    def execute_training(self, algorithm_params: dict[str, Any]) -> TrainResult:
        return _train(self.algorithm, {**algorithm_params, "backend": self.backend_name})


class HoneAlgorithm(Algorithm):
    """One algorithm of hone's table; ``kwargs`` given at creation are defaults of every ``train`` call."""

    algorithm: ClassVar[str] = ""

    def __init__(self, backend: Backend | None = None, **kwargs: Any):
        spec = get_algorithm(self.algorithm)
        self.backend = backend if backend is not None else _backend_class(spec, spec.backends[0])()
        self.config = kwargs

    def train(self, model_path: str, data_path: str, ckpt_output_dir: str, **kwargs: Any) -> Any:
        params = {**self.config, "model_path": model_path, "data_path": data_path,
                  "ckpt_output_dir": ckpt_output_dir, **kwargs}
        # Training Hub passes None for "not given": the schema's default applies then
        return self.backend.execute_training({k: v for k, v in params.items() if v is not None})

    def _fields(self) -> dict[str, Any]:
        return {name: info for schema in RunConfig.sections(self.algorithm).values()
                for name, info in schema.model_fields.items()}

    def get_required_params(self) -> dict[str, Any]:
        """Parameter name -> type of the parameters without a default (from hone's schema)."""
        return {n: info.annotation for n, info in self._fields().items() if info.is_required()}

    def get_optional_params(self) -> dict[str, Any]:
        """Parameter name -> type of every other parameter (from hone's schema)."""
        return {n: info.annotation for n, info in self._fields().items() if not info.is_required()}


class SFTAlgorithm(HoneAlgorithm):
    """Supervised fine-tuning of every parameter."""

    algorithm = "sft"


class OSFTAlgorithm(HoneAlgorithm):
    """Orthogonal Subspace Fine-Tuning; ``unfreeze_rank_ratio`` is required."""

    algorithm = "osft"

    def train(self, model_path: str, data_path: str, *args: Any, **kwargs: Any) -> Any:
        """Training Hub's order (``unfreeze_rank_ratio, effective_batch_size, max_tokens_per_gpu, max_seq_len,
        learning_rate, ckpt_output_dir``) or hone's (``ckpt_output_dir`` third), as :func:`hone.api.osft`."""
        from hone.api import OSFT_HONE_POSITIONAL, OSFT_POSITIONAL, bind

        third_is_dir = bool(args) and isinstance(args[0], str)
        names = OSFT_HONE_POSITIONAL if third_is_dir else OSFT_POSITIONAL
        names = tuple(n for n in names if n != "backend")
        params = bind("train", names, (model_path, data_path, *args), kwargs)
        return super().train(**params)


class LoRASFTAlgorithm(HoneAlgorithm):
    """LoRA / QLoRA supervised fine-tuning."""

    algorithm = "lora"


class InstructLabTrainingSFTBackend(HoneBackend):
    algorithm, backend_name = "sft", "instructlab-training"


class MiniTrainerOSFTBackend(HoneBackend):
    algorithm, backend_name = "osft", "mini-trainer"


class UnslothLoRABackend(HoneBackend):
    algorithm, backend_name = "lora", "unsloth"


_NAMED: dict[tuple[str, str], type[HoneBackend]] = {
    (c.algorithm, c.backend_name): c for c in (InstructLabTrainingSFTBackend, MiniTrainerOSFTBackend,
                                               UnslothLoRABackend)}
_ALGORITHM_CLASSES: dict[str, type[HoneAlgorithm]] = {c.algorithm: c for c in (SFTAlgorithm, OSFTAlgorithm,
                                                                                LoRASFTAlgorithm)}


def _backend_class(spec: AlgorithmSpec, name: str) -> type[Backend]:
    if name not in spec.backends:
        accepted = ", ".join(spec.backends) or "none"
        raise HoneError(f"unknown backend {name!r} for {_hub_name(spec)}", where="backend_name",
                        fix=f"use {accepted} (Training Hub's name; hone trains with its own engine either way), "
                            "or leave it out")
    cls = _NAMED.get((spec.name, name))
    if cls is None:  # an algorithm added to the table later: the same engine under its own backend name
        cls = type(f"{spec.name.title()}{name.title().replace('-', '')}Backend", (HoneBackend,),
                   {"algorithm": spec.name, "backend_name": name})
        _NAMED[(spec.name, name)] = cls
    return cls


def _algorithm_class(spec: AlgorithmSpec) -> type[Algorithm]:
    cls = _ALGORITHM_CLASSES.get(spec.name)
    if cls is None:
        cls = type(f"{spec.name.title()}Algorithm", (HoneAlgorithm,), {"algorithm": spec.name, "__doc__": spec.summary})
        _ALGORITHM_CLASSES[spec.name] = cls
    return cls


class AlgorithmRegistry:
    """Algorithms and their backends: hone's table, plus classes registered here (Training Hub's extension
    point for algorithms of one's own)."""

    _algorithms: ClassVar[dict[str, type[Algorithm]]] = {}
    _backends: ClassVar[dict[str, dict[str, type[Backend]]]] = {}

    @classmethod
    def register_algorithm(cls, name: str, algorithm_class: type[Algorithm]) -> None:
        cls._algorithms[name] = algorithm_class
        cls._backends.setdefault(name, {})

    @classmethod
    def register_backend(cls, algorithm_name: str, backend_name: str, backend_class: type[Backend]) -> None:
        if algorithm_name not in cls.list_algorithms():
            raise HoneError(f"algorithm {algorithm_name!r} is not registered", where="register_backend",
                            fix="register the algorithm before its backends")
        cls._backends.setdefault(algorithm_name, {})[backend_name] = backend_class

    @classmethod
    def list_algorithms(cls) -> list[str]:
        names = [_hub_name(spec) for spec in ALGORITHMS.values()]
        return names + [n for n in cls._algorithms if n not in names]

    @classmethod
    def list_backends(cls, algorithm_name: str) -> list[str]:
        extra = list(cls._backends.get(algorithm_name, {}))
        if algorithm_name in cls._algorithms:
            return extra
        try:
            spec = _spec(algorithm_name)
        except HoneError:
            return extra
        return list(spec.backends) + [b for b in extra if b not in spec.backends]

    @classmethod
    def get_algorithm(cls, name: str) -> type[Algorithm]:
        if name in cls._algorithms:
            return cls._algorithms[name]
        if name not in cls.list_algorithms():
            hint = suggest(name, cls.list_algorithms())
            raise HoneError(f"unknown algorithm {name!r}" + (f": {hint}" if hint else ""), where="algorithm_name",
                            fix=f"use one of {', '.join(cls.list_algorithms())}")
        return _algorithm_class(_spec(name))

    @classmethod
    def get_backend(cls, algorithm_name: str, backend_name: str) -> type[Backend]:
        cls.get_algorithm(algorithm_name)
        extra = cls._backends.get(algorithm_name, {})
        if backend_name in extra:
            return extra[backend_name]
        if algorithm_name in cls._algorithms:
            raise HoneError(f"unknown backend {backend_name!r} for {algorithm_name}", where="backend_name",
                            fix=f"use one of {', '.join(extra) or 'none (register one first)'}")
        return _backend_class(_spec(algorithm_name), backend_name)


def create_algorithm(algorithm_name: str, backend_name: str | None = None, **kwargs: Any) -> Algorithm:
    """An algorithm object with the given (or first) backend; ``kwargs`` go to its constructor."""
    cls = AlgorithmRegistry.get_algorithm(algorithm_name)
    if backend_name is None:
        backends = AlgorithmRegistry.list_backends(algorithm_name)
        if not backends:
            raise HoneError(f"no backend is registered for {algorithm_name!r}", where="backend_name",
                            fix="register one with AlgorithmRegistry.register_backend")
        backend_name = backends[0]
    backend = AlgorithmRegistry.get_backend(algorithm_name, backend_name)()
    return cls(backend=backend, **kwargs)


# -- the memory estimator ----------------------------------------------------------------------------------

# Training Hub's training_method names -> hone's algorithm (and QLoRA's 4-bit base)
_METHODS = {"sft": ("sft", False), "osft": ("osft", False), "osft-e": ("osft", False), "lora": ("lora", False),
            "qlora": ("lora", True)}


def estimate(
    training_method: str = "sft",
    num_gpus: int = 8,
    gpu_memory: int = 85899345920,
    model_path: str = "ibm-granite/granite-3.3-8b-instruct",
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    max_tokens_per_gpu: int | None = None,
    use_liger: bool | None = None,
    verbose: int = 1,
    trust_remote_code: bool = False,
    unfreeze_rank_ratio: float = 0.25,
    lora_r: int = 32,
    *,
    dtype: str = "bfloat16",
    lora_target_modules: list[str] | None = None,
    target_patterns: list[str] | None = None,
    activation_checkpointing: bool = False,
    fsdp_sharding_strategy: str = "FULL_SHARD",
) -> tuple[int, int, int]:
    """Peak memory per GPU of training ``model_path`` with hone: (lower bound, expected, upper bound) in bytes.

    Training Hub's signature and result. ``training_method``: sft, osft, lora or qlora (osft-e = osft). Tokens per
    GPU in a micro-batch: ``max_tokens_per_gpu``, capped by ``batch_size * max_seq_len / num_gpus`` when both are
    given. ``use_liger`` is accepted and changes nothing: hone's LM-head loss is always chunked and fused.
    ``verbose``: 0 silent, 1 the verdict for ``gpu_memory``, 2 also the breakdown. hone's own keywords: the
    parameter ``dtype`` (bfloat16, hone's default on a GPU; float32 as on a CPU), LoRA ``lora_target_modules``,
    OSFT ``target_patterns``, ``activation_checkpointing`` and ``fsdp_sharding_strategy``. Only the model's
    config is read (the parameters are counted on the meta device); no weights are loaded.
    """
    detail = estimate_detail(training_method, num_gpus=num_gpus, model_path=model_path, batch_size=batch_size,
                             max_seq_len=max_seq_len, max_tokens_per_gpu=max_tokens_per_gpu,
                             trust_remote_code=trust_remote_code, unfreeze_rank_ratio=unfreeze_rank_ratio,
                             lora_r=lora_r, dtype=dtype, lora_target_modules=lora_target_modules,
                             target_patterns=target_patterns, activation_checkpointing=activation_checkpointing,
                             fsdp_sharding_strategy=fsdp_sharding_strategy)
    if verbose > 1:
        print(detail.breakdown())
    if verbose > 0:
        print(detail.verdict(gpu_memory))
    return detail.bounds


def estimate_detail(training_method: str = "sft", *, num_gpus: int = 1, model_path: str,
                    batch_size: int | None = None, max_seq_len: int | None = None,
                    max_tokens_per_gpu: int | None = None, trust_remote_code: bool = False,
                    unfreeze_rank_ratio: float = 0.25, lora_r: int = 32, dtype: str = "bfloat16",
                    lora_target_modules: list[str] | None = None, target_patterns: list[str] | None = None,
                    activation_checkpointing: bool = False, fsdp_sharding_strategy: str = "FULL_SHARD"
                    ) -> MemoryEstimate:
    """:func:`estimate` as a :class:`~hone.models.estimate.MemoryEstimate` (components, total, bounds).

    The targets are chosen by the algorithms' own code on a meta-device copy of the model: OSFT's matrices and
    their frozen ranks and storage layouts (:mod:`hone.algorithms.osft`), LoRA's modules (:mod:`hone.algorithms.lora`).
    """
    method = str(training_method).lower()
    if method not in _METHODS:
        hint = suggest(method, _METHODS)
        raise HoneError(f"unknown training_method {training_method!r}" + (f": {hint}" if hint else ""),
                        where="training_method", fix=f"use one of {', '.join(_METHODS)}")
    algorithm, four_bit = _METHODS[method]
    tokens = _tokens_per_gpu(num_gpus, batch_size, max_seq_len, max_tokens_per_gpu)
    # one micro-batch per step only when a whole step's tokens are known to fit it
    accumulating = not (batch_size and max_seq_len and batch_size * max_seq_len / num_gpus <= tokens)
    kw: dict[str, Any] = {}
    if algorithm == "osft":
        kw["osft_targets"] = lambda model, torch_dtype: _osft_targets(model, torch_dtype, unfreeze_rank_ratio,
                                                                      target_patterns)
    elif algorithm == "lora":
        kw["lora_targets"] = lambda model: _lora_targets(model, lora_target_modules)
    return estimate_memory(model_path, algorithm, tokens_per_gpu=tokens, world_size=num_gpus, dtype=dtype,
                           trust_remote_code=trust_remote_code, lora_r=lora_r, load_in_4bit=four_bit,
                           activation_checkpointing=activation_checkpointing, accumulating=accumulating,
                           sharded=fsdp_sharding_strategy != "NO_SHARD", **kw)


def _tokens_per_gpu(num_gpus: int, batch_size: int | None, max_seq_len: int | None,
                    max_tokens_per_gpu: int | None) -> int:
    if num_gpus < 1:
        raise HoneError(f"num_gpus must be at least 1 (got {num_gpus})", where="num_gpus", fix="pass 1 or more")
    step = batch_size * max_seq_len / num_gpus if batch_size and max_seq_len else None
    if step is None and max_tokens_per_gpu is None:
        raise HoneError("the estimate needs the tokens of a micro-batch", where="estimate()",
                        fix="pass max_tokens_per_gpu, or batch_size and max_seq_len")
    return int(min(x for x in (step, max_tokens_per_gpu) if x is not None))


def _osft_targets(model, torch_dtype, ratio: float, patterns: list[str] | None
                  ) -> list[tuple[tuple[int, int], int, int]]:
    """(shape, replicated bytes, row-sharded bytes) of every OSFT target's stored subspace, built on the meta
    device exactly as training builds it (bytes -1: every direction frozen, the weight does not train)."""
    import torch

    from hone.algorithms.osft import select_targets
    from hone.algorithms.osft_subspace import Subspace, choose_kind, frozen_rank

    if not 0.0 <= ratio <= 1.0:
        raise HoneError(f"unfreeze_rank_ratio must be in [0, 1], got {ratio}", where="unfreeze_rank_ratio",
                        fix="use 0 (freeze every direction) to 1 (plain SFT), e.g. 0.25")
    out = []
    for _, p in select_targets(model, patterns):
        n, m = p.shape
        r = min(n, m)
        k = frozen_rank(1.0 - ratio, r)
        if k >= r:
            out.append(((n, m), -1, -1))
            continue
        if k == 0:
            out.append(((n, m), 0, 0))
            continue
        f32 = dict(device="meta", dtype=torch.float32)
        sub = Subspace.build(torch.empty(n, m, **f32), torch.empty(n, r, **f32), torch.empty(r, **f32),
                             torch.empty(r, m, **f32), k, choose_kind((n, m), k, torch_dtype), torch_dtype)
        rows = sum(x.numel() * x.element_size() for name, x in sub.tensors.items()
                   if name in Subspace.ROW_TENSORS[sub.kind])
        out.append(((n, m), sub.nbytes() - rows, rows))
    return out


def _lora_targets(model, target_modules: list[str] | None) -> list[tuple[int, int]]:
    """(in_features, out_features) of every module the adapters wrap, chosen as training chooses them."""
    from hone.algorithms.lora import LoRAHooks, _matches
    from hone.config import LoRAConfig

    names = LoRAHooks(LoRAConfig(target_modules=target_modules)).resolve_target_modules(model)
    return [(m.weight.shape[1], m.weight.shape[0]) for n, m in model.named_modules()
            if getattr(m, "weight", None) is not None and m.weight.ndim == 2 and any(_matches(n, t) for t in names)]


class BasicEstimator:
    """Training Hub's estimator class for SFT: ``BasicEstimator(...).estimate()`` -> (low, expected, high)."""

    method: ClassVar[str] = "sft"

    def __init__(self, num_gpus: int = 8, gpu_memory: int = 85899345920,
                 model_path: str = "ibm-granite/granite-3.3-8b-instruct", batch_size: int | None = None,
                 max_seq_len: int | None = None, max_tokens_per_gpu: int | None = None, use_liger: bool = False,
                 verbose: int = 1, trust_remote_code: bool = False, **kwargs: Any):
        self.kwargs = dict(num_gpus=num_gpus, gpu_memory=gpu_memory, model_path=model_path, batch_size=batch_size,
                           max_seq_len=max_seq_len, max_tokens_per_gpu=max_tokens_per_gpu, use_liger=use_liger,
                           verbose=verbose, trust_remote_code=trust_remote_code, **kwargs)
        unknown = set(kwargs) - set(inspect.signature(estimate).parameters)
        if unknown:
            raise HoneError(f"unknown estimator parameter(s) {', '.join(sorted(unknown))}",
                            where=type(self).__name__, fix="see hone.estimate's parameters")

    def estimate(self) -> tuple[int, int, int]:
        return estimate(self.method, **self.kwargs)


class OSFTEstimator(BasicEstimator):
    method = "osft"


class OSFTEstimatorExperimental(OSFTEstimator):
    """Training Hub's deprecated name of :class:`OSFTEstimator`."""


class LoRAEstimator(BasicEstimator):
    method = "lora"


class QLoRAEstimator(BasicEstimator):
    method = "qlora"
