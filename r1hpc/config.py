"""Typed configuration: dataclasses owned by their components, loaded from YAML, overridden on the
command line as ``section.key=value``.

Every component declares its own ``@dataclass`` config next to its code (torchtitan's habit) and
may define ``validate(self)`` raising :class:`ConfigError`. This module only knows how to turn a
nested mapping into such a tree, checking every key and type, and how to report a mistake so that
the user can find it: the file, the line, the dotted key, what was expected and what was given.
A nested section's keys are laid over the default its parent gives it (so ``pretrain.optim`` and
``grpo.optim``, one type, keep their own defaults), and a key a dataclass lists in
``RENAMED_KEYS`` is refused with the name that replaced it.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; learning rates are written that way, so read it as a
    float. It also reads ``off``/``on``/``yes``/``no`` as booleans, which turns ``routing.replay: off``
    into ``False``: only true/false are booleans here, as in YAML 1.2."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


class ConfigError(ValueError):
    """A configuration mistake, with the place it came from in the message."""


@dataclasses.dataclass
class _Source:
    """Where values came from: a file (with line numbers per dotted key) and CLI overrides."""

    name: str = "<dict>"
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    overridden: set[str] = dataclasses.field(default_factory=set)

    def where(self, key: str) -> str:
        base = key.split("[", 1)[0]  # a list item is found where its list is: 'a.b[2]' -> 'a.b'
        parts = base.split(".")
        if any(".".join(parts[:i]) in self.overridden for i in range(1, len(parts) + 1)):
            return f"command-line override '{key}'"  # the key, or a mapping holding it, was overridden
        line = self.lines.get(base)
        if line:
            return f"{self.name}:{line}: key '{key}'"
        below = sorted(k for k in self.overridden if k.startswith(base + "."))
        if below:  # e.g. 'run.seed.x=1' made 'run.seed' a mapping
            return f"command-line override '{below[0]}'"
        return f"{self.name}: key '{key}'"


def _yaml_with_lines(text: str, name: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML and remember the line of every mapping key (dotted path -> 1-based line)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {e}") from None
    lines: dict[str, int] = {}

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, src: _Source, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses (over ``default``, the
    section's default, when it is one). Ints widen to float."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{src.where(key)}: expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, key + ".", src, default if isinstance(default, tp) else None)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key, src)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{src.where(key)}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{src.where(key)}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src.where(key)}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{src.where(key)}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key, src): _coerce(v, vt, f"{key}.{k}", src) for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{src.where(key)}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{src.where(key)}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _section_default(f: dataclasses.Field, base: Any) -> Any:
    """What a nested section's keys are laid over: the enclosing default's value (a stage's own
    ``optim`` defaults), else the field's default."""
    if base is not None:
        return getattr(base, f.name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, src: _Source, base: Any = None) -> T:
    """``cls`` from ``data``; keys left out keep ``base``'s values (else the class defaults). A key a
    dataclass lists in ``RENAMED_KEYS`` (old name -> (new name, why)) is reported with its new name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = getattr(cls, "RENAMED_KEYS", {})
    for k in data:
        if k in renamed and k not in fields:
            new, why = renamed[k]
            raise ConfigError(f"{src.where(prefix + str(k))}: '{prefix}{k}' is now '{prefix}{new}' ({why})")
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{src.where(prefix + str(k))}: unknown key in section {cls.__name__}{hint}; "
                f"known keys: {', '.join(sorted(fields))}"
            )
    kwargs = {k: _coerce(v, hints[k], prefix + k, src,
                         _section_default(fields[k], base) if dataclasses.is_dataclass(hints[k]) else None)
              for k, v in data.items()}
    obj = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            where = f"section '{prefix.rstrip('.')}': " if prefix else ""
            raise ConfigError(f"{src.name}: {where}{e}") from None
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None = None, *, source: str = "<dict>") -> T:
    """Build a config dataclass from a plain mapping, checking keys and types."""
    return _build(cls, data or {}, "", _Source(name=source))


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value) with the value read as YAML (so 3, 0.1, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"command-line override '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, cls: type[T]) -> T:
    """Load ``path`` (YAML) into the config dataclass ``cls``, then apply ``section.key=value``
    overrides. Every mistake raises :class:`ConfigError` naming its place. A whole run's config is
    :func:`r1hpc.run_config.load_run_config`: this module imports no component, so every component
    can import :class:`ConfigError` from it."""
    src = _Source()
    data: dict = {}
    if path is not None:
        p = Path(path)
        src.name = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
        loaded, src.lines = _yaml_with_lines(text, str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        src.overridden.add(key)
    return _build(cls, data, "", src)  # type: ignore[arg-type]


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (for run directories and checkpoints)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
