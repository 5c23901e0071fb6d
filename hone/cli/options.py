"""CLI flags generated from the configuration schemas, so the CLI can never drift from the Python API."""
from __future__ import annotations

import types
import typing
from typing import Any, Callable, Literal

import click
from pydantic.fields import FieldInfo

from hone.config import RunConfig, get_algorithm

# Short aliases for the three positional parameters of the Python API.
ALIASES = {"model_path": "--model", "data_path": "--data", "ckpt_output_dir": "--output"}


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation; list fields are repeated options."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if bool in args and str in args:
            return str, False  # e.g. init_lora_weights: true/false or a method name; pydantic parses it
        if len(args) == 1:
            annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return bool, True
    if annotation in (int, float, str):
        return annotation, False
    if typing.get_origin(annotation) is list:
        return list, False
    return str, False


def _option(name: str, info: FieldInfo, algorithm: str) -> Callable:
    ctype, is_flag = _click_type(info.annotation)
    flag = "--" + name.replace("_", "-")
    default = None if info.is_required() else get_algorithm(algorithm).defaults.get(name, info.default)
    help_text = (info.description or "") + ("" if default is None else f"  [default: {default}]")
    if is_flag:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if ctype is list:
        return click.option(flag, name, multiple=True, help=help_text + "  (repeat for several)")
    decls = [flag] + ([ALIASES[name]] if name in ALIASES else [])
    return click.option(*decls, name, type=ctype, default=None, help=help_text)


def parameter_options(algorithm: str) -> Callable:
    """Decorator adding one option per parameter of ``algorithm`` (values default to None = not given)."""
    def decorate(fn: Callable) -> Callable:
        fields = [(n, i) for s in RunConfig.sections(algorithm).values() for n, i in s.model_fields.items()
                  if n not in getattr(s, "python_only", ())]
        fields.sort(key=lambda f: f[0] not in ALIASES)  # --model, --data, --output first
        for name, info in reversed(fields):
            fn = _option(name, info, algorithm)(fn)
        return fn
    return decorate


def given(values: dict[str, Any], algorithm: str) -> dict[str, Any]:
    """Only the parameters the user actually passed."""
    sections = RunConfig.sections(algorithm).values()
    names = {n for s in sections for n in s.model_fields if n not in getattr(s, "python_only", ())}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
            if k in names and v is not None and v != ()}
