"""Options dataclasses: a defense's hyperparameters, typed, documented and validated.

A defense declares its options as a dataclass deriving from `Options`, each field made with `option(...)`:

    @dataclass
    class MyOptions(Options):
        alpha: float = option(0.05, "percent of the vocabulary flagged", low=0, high=100, low_inclusive=False)
        unlearn: str = option("btu", "how to unlearn", choices=("btu", "row"))
        rounds: list[int] = option(help="detection rounds", factory=lambda: [1, 2, 3], choices=(1, 2, 3))

Building one validates every field against its annotation, choices and range (`validate`), and raises
`btu.errors.ConfigError` naming the option. `parse_value` turns `--set name=value` text into a field's type,
`load_config_file` reads a YAML, TOML or JSON file, and `build_options` merges preset < file < --set.
`specs` and `describe` list the options for help output.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["MISSING", "OptionSpec", "Options", "build_options", "check_value", "describe", "format_value",
           "from_dict", "load_config_file", "option", "parse_set", "parse_value", "specs", "to_dict", "validate"]

_META_KEY = "btu.option"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null")
# the top-level keys of a config file that holds its options under `options`
_FILE_KEYS = ("options", "defense", "preset")


@dataclass(frozen=True)
class _Meta:
    help: str = ""
    choices: tuple | None = None
    low: Any = None
    high: Any = None
    low_inclusive: bool = True
    high_inclusive: bool = True


def option(default=MISSING, help: str = "", *, choices=None, low=None, high=None, low_inclusive: bool = True,
           high_inclusive: bool = True, factory=None):
    """A dataclass field with its one-line help, allowed values (`choices`) and range ([low, high], each end
    inclusive unless said otherwise; None: unbounded). `factory` (or a list/dict/set default, copied per
    instance) makes a default_factory. For a list field, `choices` and the range apply to each item."""
    if default is not MISSING and factory is not None:
        raise TypeError("option() takes a default or a factory, not both")
    meta = {_META_KEY: _Meta(help=help, choices=tuple(choices) if choices is not None else None, low=low, high=high,
                             low_inclusive=low_inclusive, high_inclusive=high_inclusive)}
    if factory is None and isinstance(default, (list, dict, set)):
        factory = functools.partial(copy.deepcopy, default)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- types ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Type:
    """A field's annotation, reduced to what validation needs."""

    base: Any  # int, float, bool, str, list, or None (anything: not checked)
    optional: bool = False  # X | None
    item: Any = None  # list[item] (None: any item)

    @property
    def name(self) -> str:
        if self.base is list:
            core = f"list[{self.item.__name__}]" if self.item is not None else "list"
        else:
            core = self.base.__name__ if self.base is not None else "any"
        return f"{core} | None" if self.optional else core

    def expects(self) -> str:
        if self.base is list:
            core = f"a list of {self.item.__name__}" if self.item is not None else "a list"
        elif self.base is None:
            core = "any value"
        else:
            n = self.base.__name__
            core = f"{'an' if n[0] in 'aeiou' else 'a'} {n}"
        return f"{core} or none" if self.optional else core


_SCALARS = (int, float, bool, str)


def _reduce(tp) -> _Type:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _reduce(args[0]) if len(args) == 1 else _Type(None)
        return dataclasses.replace(inner, optional=True) if len(args) < len(typing.get_args(tp)) else inner
    if tp is list or origin is list:
        args = typing.get_args(tp)
        item = args[0] if args and args[0] in _SCALARS else None
        return _Type(list, item=item)
    if tp in _SCALARS:
        return _Type(tp)
    return _Type(None)


@functools.lru_cache(maxsize=None)
def _types(cls) -> dict[str, _Type]:
    hints = typing.get_type_hints(cls)
    return {f.name: _reduce(hints.get(f.name, Any)) for f in fields(cls)}


def _fields(cls) -> dict[str, dataclasses.Field]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not an options dataclass")
    return {f.name: f for f in fields(cls)}


def _meta(f: dataclasses.Field) -> _Meta:
    return f.metadata.get(_META_KEY) or _Meta()


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# --- checking values -----------------------------------------------------------------------------------------

def _scalar(value, base, name: str, t: _Type, whole):
    """`value` as `base`, or a ConfigError. An int is accepted for a float (and made one)."""
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif base is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise ConfigError(f"option {name}: expects {t.expects()}, not {whole!r}")
    return base(value)


def _num(x) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


def _range_text(m: _Meta) -> str | None:
    if m.low is not None and m.high is not None:
        return f"{'[' if m.low_inclusive else '('}{_num(m.low)}, {_num(m.high)}{']' if m.high_inclusive else ')'}"
    if m.low is not None:
        return f"{'>=' if m.low_inclusive else '>'} {_num(m.low)}"
    if m.high is not None:
        return f"{'<=' if m.high_inclusive else '<'} {_num(m.high)}"
    return None


def _in_range(x, m: _Meta) -> bool:
    if m.low is not None and not (x >= m.low if m.low_inclusive else x > m.low):
        return False
    if m.high is not None and not (x <= m.high if m.high_inclusive else x < m.high):
        return False
    return True


def _allowed(x, name: str, m: _Meta, items: bool, shown=None):
    """Check choices and range; the message shows `shown` (the value as given) where given."""
    must = "items must" if items else "must"
    shown = x if shown is None else shown
    if m.choices is not None and x not in m.choices:
        raise ConfigError(f"option {name}: {must} be one of {', '.join(map(str, m.choices))}, not {shown!r}")
    if (m.low is not None or m.high is not None) and isinstance(x, numbers.Real) and not _in_range(x, m):
        rt = _range_text(m)
        raise ConfigError(f"option {name}: {must} be {'in ' + rt if rt[0] in '[(' else rt}, not {shown!r}")


def _field(cls, name: str) -> dataclasses.Field:
    fs = _fields(cls)
    if name not in fs:
        raise ConfigError(_unknown(cls, name))
    return fs[name]


def _unknown(cls, name) -> str:
    names = list(_fields(cls))
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else f"the options are {', '.join(names)}"
    return f"unknown option {name!r} ({hint})"


def check_value(cls, name: str, value):
    """`value` for option `name` of `cls`, converted (int -> float, tuple -> list) and checked against the
    field's type, choices and range; a ConfigError naming the option otherwise."""
    f = _field(cls, name)
    t, m = _types(cls)[name], _meta(f)
    if value is None:
        if t.optional or t.base is None:
            return None
        raise ConfigError(f"option {name}: expects {t.expects()}, not None")
    if t.base is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"option {name}: expects {t.expects()}, not {value!r}")
        out = [_scalar(v, t.item, name, t, value) if t.item is not None else v for v in value]
        for v, given in zip(out, value):
            _allowed(v, name, m, items=True, shown=given)
        return out
    converted = _scalar(value, t.base, name, t, value)
    _allowed(converted, name, m, items=False, shown=value)
    return converted


def validate(obj) -> None:
    """Check every field of the options dataclass instance `obj` (type, choices, range), converting in place
    where a value is accepted as another type (an int for a float, a tuple for a list)."""
    for name in _fields(type(obj)):
        value = getattr(obj, name)
        checked = check_value(type(obj), name, value)
        if checked is not value:
            object.__setattr__(obj, name, checked)


@dataclass
class Options:
    """Base of a defense's options dataclass: building an instance validates it. A subclass with its own
    __post_init__ (for cross-field checks) calls super().__post_init__() first."""

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping):
        return from_dict(cls, d)

    @classmethod
    def describe(cls) -> str:
        return describe(cls)


# --- help listings -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptionSpec:
    name: str
    type_name: str
    default: Any  # MISSING: required
    help: str
    choices: tuple | None
    range_text: str | None


def specs(cls) -> list[OptionSpec]:
    """One OptionSpec per field of `cls`, in declaration order."""
    tys = _types(cls)
    out = []
    for name, f in _fields(cls).items():
        m = _meta(f)
        out.append(OptionSpec(name, tys[name].name, _default(f), m.help, m.choices, _range_text(m)))
    return out


def format_value(value) -> str:
    """A value as `--set` would take it: true/false, none, lists comma-separated."""
    if value is MISSING:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value == "":
        return '""'
    return str(value)


def describe(cls) -> str:
    """A table of `cls`'s options: name, type, default and help (with the choices or range)."""
    rows = [("option", "type", "default", "help")]
    for s in specs(cls):
        text = s.help
        if s.choices is not None:
            each = "each " if s.type_name.startswith("list") else ""
            text += f" ({each}one of: {', '.join(map(str, s.choices))})"
        if s.range_text:
            text += f" (range: {s.range_text})"
        rows.append((s.name, s.type_name, format_value(s.default), text.strip()))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows).rstrip()


# --- parsing text --------------------------------------------------------------------------------------------

def _parse_scalar(text: str, base, name: str, t: _Type, whole: str):
    s = text.strip()
    try:
        if base is bool:
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError
        if base is int:
            return int(s)
        if base is float:
            return float(s)
    except ValueError:
        raise ConfigError(f"option {name}: expects {t.expects()}, not {whole!r}") from None
    if base is None:  # a plain list's items: a number where they read as one
        for conv in (int, float):
            try:
                return conv(s)
            except ValueError:
                pass
    return s


def parse_value(cls, name: str, text: str):
    """Command-line `text` as option `name` of `cls` (checked: type, choices, range). bool: true/false, 1/0,
    yes/no, on/off; `X | None`: none/null; lists: comma- or space-separated (rounds=1,2)."""
    _field(cls, name)
    t = _types(cls)[name]
    if not isinstance(text, str):
        return check_value(cls, name, text)
    s = text.strip()
    if t.optional and s.lower() in _NONE:
        value = None
    elif t.base is list:
        body = s[1:-1] if s.startswith("[") and s.endswith("]") else s
        value = [_parse_scalar(p, t.item, name, t, text) for p in re.split(r"[,\s]+", body) if p]
    elif t.base is str:
        value = text
    else:
        value = _parse_scalar(s, t.base, name, t, text)
    return check_value(cls, name, value)


def parse_set(items) -> dict[str, str]:
    """`--set a=1 --set b=x` -> {"a": "1", "b": "x"} (a later item wins; dashes in names read as underscores)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--set {item!r}: expects NAME=VALUE")
        out[name] = value
    return out


# --- config files --------------------------------------------------------------------------------------------

def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.1 reads 1e-4 (no dot) and 1.0e4 (unsigned exponent) as strings; read them as floats
    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def read_yaml(text: str, path):
    """Parse YAML text (1e-4 as a float); a syntax error is a ConfigError naming the file, line and column."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        what = f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None and \
            getattr(e, "problem", None) else _one_line(e)
        raise ConfigError(f"{path}: not valid YAML: {what}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def load_config_file(path) -> tuple[dict, dict]:
    """Read a .yaml/.yml, .toml or .json config file -> (options, meta). The options sit at the top level, or
    under `options` beside `defense: NAME` and `preset: NAME`; meta is {"defense": ..., "preset": ...} (None
    where not given). Errors name the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such config file")
    if p.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    ext = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it: {_one_line(e)}") from None
    if ext in (".yaml", ".yml"):
        data = read_yaml(text, path)
        if data is None:
            data = {}
    elif ext == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {_one_line(e)}") from None
    elif ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    else:
        raise ConfigError(f"{path}: unknown config format {ext or '(no extension)'!r}; use .yaml, .yml, .toml "
                          "or .json")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expects a mapping of option names to values, not {type(data).__name__}")
    meta = {"defense": None, "preset": None}
    if any(k in data for k in _FILE_KEYS):
        for k in data:
            if k not in _FILE_KEYS:
                raise ConfigError(f"{path}: unknown key {k!r} beside options (a config file holds its options at "
                                  "the top level, or under `options` beside `defense` and `preset`)")
        for k in ("defense", "preset"):
            if data.get(k) is not None and not isinstance(data[k], str):
                raise ConfigError(f"{path}: {k} expects a name, not {data[k]!r}")
            meta[k] = data.get(k)
        opts = data.get("options")
        if opts is None:
            opts = {}
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{path}: options expects a mapping of option names to values, not "
                              f"{type(opts).__name__}")
    else:
        opts = data
    for k in opts:
        if not isinstance(k, str):
            raise ConfigError(f"{path}: option names are text, not {k!r}")
    return dict(opts), meta


def _file_value(cls, name: str, value):
    """A typed value from a config file: no text parsing, except none/null for `X | None` (TOML has no null)."""
    t = _types(cls)[name]
    if t.optional and t.base is not str and isinstance(value, str) and value.strip().lower() in _NONE:
        value = None
    return check_value(cls, name, value)


def build_options(cls, preset: Mapping | None = None, file_values: Mapping | None = None,
                  set_values: Mapping[str, str] | None = None, source: str = "--config"):
    """An instance of `cls` from a preset, a config file's values (named `source` in errors) and --set text;
    each overrides the one before. Cross-field checks run on the merged values."""
    fs = _fields(cls)
    values: dict[str, Any] = {}
    for k, v in (preset or {}).items():
        if k not in fs:
            raise ConfigError(f"preset: {_unknown(cls, k)}")
        values[k] = copy.deepcopy(v)
    for k, v in (file_values or {}).items():
        if k not in fs:
            raise ConfigError(f"{source}: {_unknown(cls, k)}")
        try:
            values[k] = _file_value(cls, k, v)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    for k, text in (set_values or {}).items():
        try:
            values[k] = parse_value(cls, k, text)
        except ConfigError as e:
            raise ConfigError(f"--set: {e}") from None
    return _construct(cls, values)


def _construct(cls, values: dict):
    missing = [n for n, f in _fields(cls).items() if _default(f) is MISSING and n not in values]
    if missing:
        raise ConfigError(f"option {missing[0]}: required (no default)")
    return cls(**values)


def to_dict(obj) -> dict:
    """An options instance as a plain dict (lists copied)."""
    return dataclasses.asdict(obj)


def from_dict(cls, d: Mapping):
    """`cls` from a dict such as to_dict's; unknown keys are an error."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{cls.__name__}: expects a mapping of option names to values, not {type(d).__name__}")
    fs = _fields(cls)
    for k in d:
        if k not in fs:
            raise ConfigError(f"{cls.__name__}: {_unknown(cls, k)}")
    return _construct(cls, dict(d))
