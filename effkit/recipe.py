"""Recipes: the steps of `effkit compress` and their options, read from and written to TOML.

A recipe has one section per step, holding the fields of that pass's config dataclass (the same
options as the commands), plus `[pipeline]` (the quality bar) and `[bench]` (timing):

    [prune]
    ratio = 0.5
    finetune-epochs = 3
    [distill]            # an empty section turns a step on with its defaults
    [quantize]
    method = "static"
    [export]
    opset = 18
    [pipeline]
    max-accuracy-drop = "1pt"

Keys are written kebab-case (snake_case is accepted too). Unknown sections or keys and values of
the wrong type are errors that name the field and its line. The allowed keys come from the pass
configs themselves (`dataclasses.fields`), so recipes and commands never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effkit.errors import EffkitError, UsageError
from effkit.files import loads_toml, mark_read
from effkit.judge import OFF, QualityBar, parse_accuracy_drop, parse_bar_tolerance, quality_bar
from effkit.passes import registry
from effkit.specs import check_number, check_numbers

# The built-in steps, each a field of Recipe; third-party passes (effkit.passes.registry) go to `extra`.
BUILTIN_STEPS = ("prune", "distill", "quantize", "export")


@dataclass(frozen=True)
class PipelineConfig:
    """The quality bar of the whole pipeline and how hard to try to keep it. Unset, the default bar
    holds (`effkit.judge.quality_bar`: 1 pt of accuracy with labelled --eval data, else cosine >= 0.99
    against the original's outputs); `none` switches a bar off."""

    max_accuracy_drop: str | None = None  # e.g. "1pt": against the original, on --eval data
    tolerance: tuple[str, ...] = ()  # e.g. ("cosine>=0.99",): against the original's outputs
    backoff_tries: int = 3  # retries of a step that breaks the bar, each backed off further

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.max_accuracy_drop is not None:
            parse_accuracy_drop(self.max_accuracy_drop)
        for t in self.tolerance:
            if str(t).strip().lower() != OFF:
                parse_bar_tolerance(t)
        if self.backoff_tries < 0:
            raise UsageError("backoff-tries must be 0 or more")

    def bar(self, labelled: bool) -> QualityBar:
        """The bar in force, with or without labelled evaluation data."""
        return quality_bar(self.max_accuracy_drop, self.tolerance, labelled)

    @property
    def asks_accuracy(self) -> bool:
        """Whether the user set an accuracy bar (which needs labelled --eval data)."""
        return self.bar(labelled=False).max_drop_pt is not None


@dataclass(frozen=True)
class BenchConfig:
    """How every step is timed. Short by default: compress times many models, not one precisely."""

    threads: int | None = None  # default: the free cores (effkit.env.default_threads)
    warmup: int = 5
    iterations: int | None = None  # default: as many as fit in min-time
    min_time: float = 0.25

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.threads is not None and self.threads < 1:
            raise UsageError("threads must be at least 1")
        if self.warmup < 0 or (self.iterations is not None and self.iterations < 1) or self.min_time < 0:
            raise UsageError("warmup must be >= 0, iterations >= 1 and min-time >= 0")


_LOCAL_CONFIGS = {"pipeline": PipelineConfig, "bench": BenchConfig}


def config_class(section: str) -> type:
    """The dataclass behind a recipe section: a pass's config, or the pipeline's or bench's settings."""
    if section in _LOCAL_CONFIGS:
        return _LOCAL_CONFIGS[section]
    return registry.by_section(section).config


@dataclass(frozen=True)
class Recipe:
    """Which steps run, with which configs. `None` means the step is off; export always runs."""

    prune: Any = None
    distill: Any = None
    quantize: Any = None
    export: Any = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    extra: tuple[tuple[str, Any], ...] = ()  # (section, config) of third-party passes, in recipe order

    def __post_init__(self) -> None:
        if self.export is None:
            object.__setattr__(self, "export", config_class("export")())
        object.__setattr__(self, "extra", tuple((name, config) for name, config in self.extra))

    @property
    def steps(self) -> list[str]:
        """The steps that run, in pipeline order (third-party ones after prune and distill, in recipe order)."""
        extra = [name for name, _ in self.extra]
        order = [name for name in BUILTIN_STEPS]
        at = order.index(registry.THIRD_PARTY_AFTER) + 1
        order[at:at] = extra
        return [name for name in order if self.config(name) is not None]

    def config(self, section: str) -> Any:
        """The config of a step or setting section (None when the step is off)."""
        if section in BUILTIN_STEPS or section in registry.SETTINGS:
            return getattr(self, section)
        return dict(self.extra).get(section)

    # ------------------------------------------------------------ reading

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a TOML recipe file."""
        path = Path(path)
        mark_read(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"no such recipe: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read recipe {path}: {e}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "recipe") -> Recipe:
        """Parse TOML recipe text; errors name the source, the line, the section and the key."""
        text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some Windows editors write
        return cls.from_dict(loads_toml(text, source), source, text)

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe", text: str | None = None) -> Recipe:
        """Build a recipe from {section: {key: value}}; `text` (the TOML) lets errors give line numbers."""

        def where(section: str | None, key: str | None = None) -> str:
            line = _line_of(text, section, key) if text is not None else None
            return f"{source}{f' line {line}' if line else ''}"

        configs: dict[str, Any] = {}
        sections = (*registry.passes(), *registry.SETTINGS)
        for section, values in data.items():
            if section not in sections:
                if not isinstance(values, dict):
                    raise UsageError(f"{where(None, section)}: key {section!r} is outside any section",
                                     f"put it under one of [{'], ['.join(sections)}]")
                raise UsageError(f"{where(section)}: unknown section [{section}]",
                                 f"sections are [{'], ['.join(sections)}]")
            if not isinstance(values, dict):
                raise UsageError(f"{where(None, section)}: {section!r} must be a section [{section}], not a value")
            config_cls = config_class(section)
            fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
            hints = typing.get_type_hints(config_cls)
            kwargs = {}
            for key, value in values.items():
                name = key.replace("-", "_")
                if name not in fields:
                    known = ", ".join(_toml_key(n) for n in fields)
                    raise UsageError(f"{where(section, key)}: unknown key {key!r} in [{section}]",
                                     f"known keys: {known}")
                try:  # nan, inf and 10**20 are TOML numbers too
                    check_number(f"[{section}] {key}", value)
                except UsageError as e:
                    raise UsageError(f"{where(section, key)}: {e.message}", e.hint) from None
                try:
                    kwargs[name] = _coerce(value, hints.get(name, Any))
                except TypeError as e:
                    raise UsageError(f"{where(section, key)}: [{section}] {key} must be {e}, "
                                     f"got {_show(value)}") from None
            try:
                configs[section] = config_cls(**kwargs)
            except EffkitError as e:
                line_key = next(iter(values), None) if len(values) == 1 else None
                raise UsageError(f"{where(section, line_key)}: [{section}] {e.message}", e.hint) from None
        own = {s: c for s, c in configs.items() if s in BUILTIN_STEPS or s in registry.SETTINGS}
        return cls(**own, extra=tuple((s, c) for s, c in configs.items() if s not in own))

    # ------------------------------------------------------------ writing

    def to_dict(self) -> dict:
        """{section: {kebab-key: value}} for every step that runs (all defaults filled) and the settings."""
        out = {}
        for section in (*self.steps, "pipeline", "bench"):
            config = self.config(section)
            out[section] = {_toml_key(f.name): _plain(getattr(config, f.name))
                            for f in dataclasses.fields(config) if f.init and getattr(config, f.name) is not None}
        return out

    def to_toml(self, comments: list[str] = ()) -> str:
        """The resolved recipe as TOML: `Recipe.parse(recipe.to_toml()) == recipe`. `comments` go on top."""
        lines = ["# effkit compress recipe (resolved: every default written out).",
                 *[f"# {c}" for c in comments], ""]
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
            lines.append("")
        return "\n".join(lines)

    def with_changes(self, section: str, **changes: Any) -> Recipe:
        """A copy with some fields of one section changed (the section is turned on if it was off)."""
        config = self.config(section) or config_class(section)()
        try:
            changed = dataclasses.replace(config, **changes)
            if section in BUILTIN_STEPS or section in registry.SETTINGS:
                return dataclasses.replace(self, **{section: changed})
            others = tuple((s, c) for s, c in self.extra if s != section)
            return dataclasses.replace(self, extra=others + ((section, changed),))
        except TypeError as e:  # a field the installed pass does not have
            raise UsageError(f"[{section}] has no such option: {e}") from None


# ---------------------------------------------------------------- helpers

def _toml_key(name: str) -> str:
    return name.replace("_", "-")


def _line_of(text: str, section: str | None, key: str | None) -> int | None:
    """The line of `key` in `[section]` (or of the section header when key is None)."""
    current = None
    pattern = re.compile(rf"""\s*["']?({re.escape(key)}|{re.escape(key.replace('-', '_'))}|"""
                         rf"""{re.escape(key.replace('_', '-'))})["']?\s*=""") if key else None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\[\]]+?)\s*\]", line)
        if header:
            current = header.group(1).strip().strip("\"'")
            if key is None and current == section:
                return number
            continue
        if key is not None and current == section and pattern.match(line):
            return number
    return None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, f"a {getattr(hint, '__name__', hint)}")


def _coerce(value: Any, hint: Any) -> Any:
    """`value` checked against the type `hint` (TOML lists become tuples); TypeError names what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return tuple(value) if isinstance(value, list) else value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError(_describe(hint))
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(_describe(hint))
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise TypeError(_describe(hint))
        item = args[0] if args else Any
        try:
            return tuple(_coerce(v, item) for v in value)
        except TypeError:
            raise TypeError(_describe(hint)) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # another type (a path, an enum): let the config's own validation judge it
        return value
    raise TypeError(_describe(hint))


def _show(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    return f"{kind} ({_toml_value(_plain(value))})" if not isinstance(value, dict) else kind


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
