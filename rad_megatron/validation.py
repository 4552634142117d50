"""Config values checked at the door, by one mechanism driven by the config dataclasses themselves.

Every field is checked against its type hint (bool, int, float, str, X | None, list[X], tuple[...], dict[K, V], a
nested dataclass) and against the rules declared beside it in the field's metadata:

    grad_accum: int = field(default=1, metadata=rules(ge=1))

Numbers declare ge / gt / le / lt, strings `choices` (a tuple, or "module:NAME" read when first needed), lists
`min_len`; on a list, tuple or dict a rule applies to each element (value). A dict field holding another dataclass's
fields names it with `schema="module:Class"` and is checked as that class (the dict itself is kept). A bad value is
one line naming the field, the value and what is allowed, before anything runs:

    config.distill.train.grad_accum=0: must be an integer >= 1

Fields with `resume=False` (deadlines, tolerances) may differ when a run resumes (`resume_view`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass

from rad_megatron.errors import RadError, closest


@dataclass(frozen=True)
class Rules:
    """What a field accepts beyond its type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | str | None = None
    min_len: int | None = None
    schema: str | None = None
    resume: bool = True


# False inside `sections_unchecked()`: dict sections named by a schema are only checked to be mappings (their classes
# live in modules that import torch and Megatron, seconds that a launcher reading `out` should not pay)
_CHECK_SECTIONS = contextvars.ContextVar("rad_check_sections", default=True)


@contextlib.contextmanager
def sections_unchecked():
    token = _CHECK_SECTIONS.set(False)
    try:
        yield
    finally:
        _CHECK_SECTIONS.reset(token)


def rules(**kw) -> dict:
    """Field metadata: `field(default=..., metadata=rules(ge=1))`."""
    return {"rad": Rules(**kw)}


def rules_of(f: dataclasses.Field) -> Rules:
    return f.metadata.get("rad", Rules())


def resolve(ref):
    """A "module:NAME" reference -> the object (choices and schemas that live in heavier modules)."""
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def from_dict(cls, data, where: str, flags: bool = False):
    """Build dataclass `cls` from a mapping: unknown keys refused (naming the closest), each value checked against its
    field's type and rules. `flags`: the keys are command-line options (named --key-name in messages)."""
    if not isinstance(data, dict):
        raise RadError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise RadError(f"unknown config key '{where}.{key}'{closest(str(key), fields)}")
        name = f"--{key.replace('_', '-')}" if flags else f"{where}.{key}"
        kwargs[key] = check_value(value, hints[key], rules_of(fields[key]), name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise RadError(f"{where}: {e}") from None


def check_value(value, hint, r: Rules, where: str):
    """`value` as field type `hint` allows it (floats written 1e-3, which YAML reads as a string, become numbers;
    lists become tuples where the hint says tuple); a RadError naming `where` otherwise."""
    if r.schema is not None and isinstance(value, dict):
        if _CHECK_SECTIONS.get():
            from_dict(resolve(r.schema), value, where)
        return value
    ok, out = _convert(value, hint, r, where)
    if not ok:
        hint_text = closest(value, resolve(r.choices)) if isinstance(value, str) and r.choices else ""
        raise RadError(f"{where}={_show(value)}: must be {describe(hint, r)}{hint_text}")
    return out


def _convert(value, hint, r: Rules, where: str):
    """(ok, value) for a value of `hint`; containers recurse (their elements raise with their own index)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], r, where) if len(inner) == 1 else _unsupported(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return True, value
        return (True, from_dict(hint, value, where)) if isinstance(value, dict) else (False, None)
    if hint in (bool, int, float, str):
        return _scalar(value, hint, r)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False, None
        if not args:
            return True, value
        return True, {check_value(k, args[0], Rules(), f"{where} key"):
                      check_value(v, args[1], _each(r), f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple) or hint in (list, tuple):
        return _sequence(value, hint, r, where)
    return _unsupported(hint)


def _sequence(value, hint, r: Rules, where: str):
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if not isinstance(value, (list, tuple)):
        return False, None
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return False, None
        return True, tuple(check_value(v, a, _each(r), f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if r.min_len is not None and len(value) < r.min_len:
        return False, None
    item = args[0] if args else typing.Any
    out = [check_value(v, item, _each(r), f"{where}[{i}]") for i, v in enumerate(value)]
    return True, tuple(out) if origin is tuple else out


def _scalar(value, hint, r: Rules):
    if hint is bool:
        return isinstance(value, bool), value
    if hint is str:
        if not isinstance(value, str):
            return False, None
        choices = resolve(r.choices)
        return (choices is None or value in choices), value
    if isinstance(value, bool):
        return False, None
    if hint is int:
        return isinstance(value, int) and _in_bounds(value, r), value
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            return False, None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False, None
    return _in_bounds(value, r), float(value)


def _in_bounds(v, r: Rules) -> bool:
    return ((r.ge is None or v >= r.ge) and (r.gt is None or v > r.gt) and (r.le is None or v <= r.le)
            and (r.lt is None or v < r.lt))


def _each(r: Rules) -> Rules:
    """The rules a container's elements follow: the bounds and choices, not the container's own length."""
    return dataclasses.replace(r, min_len=None, schema=None)


def _unsupported(hint):
    raise TypeError(f"config field type {hint!r} is not checked by rad_megatron.validation; add it there")


_NOUNS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def describe(hint, r: Rules = Rules(), plural: bool = False) -> str:
    """What a field accepts, in words: 'an integer >= 1', 'a list of strings, one of a, b', 'a number, or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{describe(inner[0], r, plural)}, or null"
    if dataclasses.is_dataclass(hint):
        return f"{'mappings' if plural else 'a mapping'} of {hint.__name__} fields"
    if hint in _NOUNS:
        choices = resolve(r.choices)
        if choices is not None:
            return f"one of {', '.join(map(str, choices))}"
        return _NOUNS[hint][plural] + _bounds_text(r)
    if hint is dict or origin is dict:
        return "a mapping" + (f" of {describe(args[1], _each(r), True)}" if args else "")
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} {describe(args[0], _each(r), True)}"
    if origin in (list, tuple) or hint in (list, tuple):
        item = describe(args[0], _each(r), True) if args else "values"
        return f"{'a non-empty' if r.min_len else 'a'} list of {item}"
    return repr(hint)


def _bounds_text(r: Rules) -> str:
    parts = [f"{op} {_num(v)}" for op, v in ((">=", r.ge), (">", r.gt), ("<=", r.le), ("<", r.lt)) if v is not None]
    return (" " + " and ".join(parts)) if parts else ""


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resume_view(cls, data: dict) -> dict:
    """`data` (asdict of a `cls`) without the fields that may change when a run resumes."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or not rules_of(f).resume:
            continue
        value, hint = data[f.name], hints[f.name]
        out[f.name] = resume_view(hint, value) if dataclasses.is_dataclass(hint) and isinstance(value, dict) else value
    return out


def supported(hint) -> bool:
    """Whether `check_value` knows how to check type `hint` (every config field's must be)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint in (bool, int, float, str, dict, list, tuple) or dataclasses.is_dataclass(hint):
        return True
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return len(inner) == 1 and supported(inner[0])
    if origin in (dict, list, tuple):
        return all(supported(a) for a in args if a is not Ellipsis)
    return False


def is_number(hint) -> bool:
    """Whether a field of type `hint` holds numbers (alone or in a container): those must declare bounds."""
    return any(t in (int, float) for t in _leaf_types(hint))


def walk_fields(cls, where: str = "config"):
    """Every (where, field, hint, rules) of `cls` and of the dataclasses below it (nested, in lists, named by a
    schema): what the coverage test checks."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, r = hints[f.name], rules_of(f)
        yield f"{where}.{f.name}", f, hint, r
        below = [resolve(r.schema)] if r.schema else [a for a in _leaf_types(hint) if dataclasses.is_dataclass(a)]
        for sub in below:
            yield from walk_fields(sub, f"{where}.{f.name}")


def _leaf_types(hint) -> list:
    args = typing.get_args(hint)
    return [hint] if not args else [t for a in args for t in _leaf_types(a)]
