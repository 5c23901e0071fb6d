"""The Training Operator fine-tuning API's shape (``TrainingClient().train(...)``), mapped onto hone.

    hone.kube.train("fine-tune-granite",
                    model="hf://ibm-granite/granite-3.1-2b-instruct", dataset="data/chat.jsonl",
                    algorithm="lora", training_args={"num_train_epochs": 2, "learning_rate": 1e-4},
                    lora_config={"r": 8, "lora_alpha": 16},
                    num_workers=4, num_procs_per_worker=2,
                    resources_per_worker={"gpu": 2, "cpu": 5, "memory": "10G"}, pvc="shared")

becomes the same TrainJob as ``hone kube submit lora ...``: ``num_workers`` is the number of nodes,
``num_procs_per_worker`` the processes per node, ``resources_per_worker`` the resources per node.
"""
from __future__ import annotations

from typing import Any

from hone.errors import HoneError, suggest
from hone.kube.submit import Submission, submit

# Hugging Face TrainingArguments names -> hone (Training Hub) names.
HF_TRAINING_ARGS = {
    "num_train_epochs": "num_epochs", "output_dir": "ckpt_output_dir", "learning_rate": "learning_rate",
    "warmup_steps": "warmup_steps", "lr_scheduler_type": "lr_scheduler", "max_steps": "max_steps", "seed": "seed",
    "weight_decay": "weight_decay", "adam_beta1": "beta1", "adam_beta2": "beta2", "adam_epsilon": "eps",
    "max_grad_norm": "max_grad_norm", "gradient_checkpointing": "activation_checkpointing",
}
# peft LoraConfig names -> hone names.
PEFT_LORA_ARGS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                  "target_modules": "target_modules", "use_rslora": "use_rslora", "use_dora": "use_dora",
                  "init_lora_weights": "init_lora_weights"}
_IGNORED_DEFAULTS = {"bias": "none", "task_type": "CAUSAL_LM"}


def model_uri(model: str) -> str:
    """``hf://org/name`` -> the hub id ``org/name``; oci://, paths and hub ids unchanged."""
    if model.startswith("hf://"):
        repo = model[len("hf://"):].strip("/")
        if not repo:
            raise HoneError(f"empty Hugging Face model URI {model!r}", where="model", fix="write hf://org/name")
        return repo
    return model


def _as_dict(obj: Any, what: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    if hasattr(obj, "to_dict"):  # transformers.TrainingArguments, peft.LoraConfig
        return dict(obj.to_dict())
    raise HoneError(f"{what} must be a dict (or an object with to_dict()), got {type(obj).__name__}", where=what,
                    fix=f"pass {what}={{'learning_rate': 1e-5, ...}}")


def _training_params(training_args: Any) -> dict[str, Any]:
    from_object = training_args is not None and not isinstance(training_args, dict)
    args = _as_dict(training_args, "training_args")
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key in HF_TRAINING_ARGS:
            name = HF_TRAINING_ARGS[key]
            if key == "max_steps" and value is not None and int(value) <= 0:
                continue  # TrainingArguments' -1 = no limit
            if key == "lr_scheduler_type":
                value = getattr(value, "value", value)
            out[name] = value
        elif not from_object:  # a dict: hone names pass through (RunConfig rejects unknown ones with a hint)
            out[key] = value
    return out


def _lora_params(lora_config: Any) -> dict[str, Any]:
    from_object = lora_config is not None and not isinstance(lora_config, dict)
    out: dict[str, Any] = {}
    for key, value in _as_dict(lora_config, "lora_config").items():
        if key in PEFT_LORA_ARGS:
            if key == "target_modules" and isinstance(value, (set, frozenset)):
                value = sorted(value)
            if value is not None:
                out[PEFT_LORA_ARGS[key]] = value
        elif key in _IGNORED_DEFAULTS and value in (_IGNORED_DEFAULTS[key], None):
            continue
        elif not from_object:
            if key.startswith("lora_") or key.startswith("bnb_") or key.startswith("load_in_") or key == "save_merged":
                out[key] = value
            else:
                hint = suggest(key, list(PEFT_LORA_ARGS) + ["lora_r"])
                raise HoneError(f"unsupported lora_config key {key!r}" + (f": {hint}" if hint else ""),
                                where="lora_config", fix=f"use {', '.join(PEFT_LORA_ARGS)}")
    return out


def train(name: str | None = None, *, model: str, dataset: str, algorithm: str | None = None,
          training_args: Any = None, lora_config: Any = None, output_dir: str | None = None,
          num_workers: int = 1, num_procs_per_worker: int | str | None = None,
          resources_per_worker: dict[str, Any] | None = None, dry_run: bool = False, backend: str = "kubernetes",
          wait: bool = False, timeout: float | None = None, **job_options: Any) -> Submission:
    """Fine-tune ``model`` on ``dataset`` as a TrainJob, Training Operator style; returns the submission
    (``str(result)`` is the job name).

    ``model``: ``hf://org/name``, a hub id, ``oci://...`` or a path (relative paths are on the PVC);
    ``dataset``: a data path or URI as ``data_path`` accepts it (``hf://`` passes through).
    ``algorithm``: sft, osft or lora (default lora when ``lora_config`` is given, else sft).
    ``training_args``: hone parameter names, or Hugging Face TrainingArguments names/objects
    (``num_train_epochs``, ``learning_rate``, ``lr_scheduler_type``, ``output_dir``, ...).
    ``output_dir`` (default ``runs/<name>``): where the pods write checkpoints.
    Other keywords are job options (``pvc``, ``image``, ``runtime``, ``env``, ``namespace``, ...).
    """
    algorithm = algorithm or ("lora" if lora_config is not None else "sft")
    if lora_config is not None and algorithm != "lora":
        raise HoneError(f"lora_config given but algorithm is {algorithm!r}", where="algorithm",
                        fix="use algorithm='lora' or drop lora_config")
    params = _training_params(training_args)
    params.update(_lora_params(lora_config))
    params["model_path"] = model_uri(model)
    params["data_path"] = dataset
    if output_dir or "ckpt_output_dir" not in params:
        params["ckpt_output_dir"] = output_dir or f"runs/{name or 'hone-' + algorithm}"
    return submit(algorithm, params=params, name=name, num_nodes=num_workers, num_procs_per_node=num_procs_per_worker,
                  resources_per_node=resources_per_worker or {}, dry_run=dry_run, backend=backend, wait=wait,
                  timeout=timeout, **job_options)
