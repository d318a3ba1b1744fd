"""Every pass effkit knows, by recipe section and by config type: the built-in ones and those other
packages install through the `effkit.passes` entry-point group.

A third-party pass is a frozen dataclass (its fields are the recipe keys of its section; validate them
in `__post_init__` and raise `effkit.errors.UsageError(message, hint)`) and a function
`run(model, config, ctx) -> effkit.passes.PassResult` that returns a new Model and leaves `model` as it
was. Register it in the package's metadata; the entry point's name is the recipe section:

    [project.entry-points."effkit.passes"]
    scale-bias = "my_package.passes:ScaleBiasConfig"   # a config class with a `run` attribute
    # or = "my_package.passes:PASS", where PASS = (ScaleBiasConfig, run)

`effkit compress --recipe r.toml` then runs `[scale-bias]` after prune and distill, before quantize and
export (recipe order among third-party passes), measured and held to the quality bar like any step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from effkit.errors import UsageError, first_line
from effkit.export import ExportConfig
from effkit.passes import PassResult, distill, export, prune, quantize
from effkit.passes.distill import DistillConfig
from effkit.passes.prune import PruneConfig
from effkit.passes.quantize import QuantizeConfig

ENTRY_POINT_GROUP = "effkit.passes"
# Sections that are not passes: the quality bar and the timing of compress.
SETTINGS = ("pipeline", "bench")


def _same_config(config: Any) -> Any:
    return config


@dataclass(frozen=True)
class Pass:
    """A pass as compress runs it: its section, config class and run function, plus how to describe a
    config and how to back off when the result breaks the quality bar (None: it cannot)."""

    name: str
    config: type
    run: Callable[[Any, Any, Any], PassResult]
    noun: str = ""  # "pruning": for messages such as "pruning breaks the quality bar"
    hint: str = "loosen --max-accuracy-drop / --tolerance"  # what to do when it cannot meet the bar (compress's flags)
    setting: Callable[[Any], str] | None = None  # a config in words
    back_off: Callable[[Any, Any, int], Any] | None = None  # (config, bar, attempt) -> milder config or None
    backoff_note: Callable[[Any, Any, PassResult], str] | None = None  # (asked, used, result) -> note
    attempt_details: Callable[[PassResult], dict] | None = None  # extra fields of an attempt's record
    for_pipeline: Callable[[Any], Any] = _same_config  # the config as compress needs it
    recovers: bool = False  # checked together with the step before it (distill recovers what prune lost)

    def describe(self, config: Any) -> str:
        return self.setting(config) if self.setting else self.name


BUILTIN = (
    Pass("prune", PruneConfig, prune.run, "pruning",
         "prune less (a smaller --prune), recover with --distill --data FILE, or loosen --max-accuracy-drop / "
         "--tolerance",
         prune.setting, prune.back_off, prune.backoff_note),
    Pass("distill", DistillConfig, distill.run, "distillation", setting=lambda c: "recovering from the original",
         recovers=True),
    Pass("quantize", QuantizeConfig, quantize.run, "quantization",
         "loosen --max-accuracy-drop / --tolerance, or quantize fewer layers (exclude)",
         quantize.setting, quantize.back_off, quantize.backoff_note, quantize.attempt_details,
         quantize.for_pipeline),
    Pass("export", ExportConfig, export.run, "the export", setting=export.setting),
)
# Where third-party passes run: on the torch model after pruning and recovery, before int8 and export.
THIRD_PARTY_AFTER = "distill"


def _from_entry_point(ep) -> Pass:
    """The Pass an `effkit.passes` entry point names: a config class with `run`, or (config class, run)."""
    try:
        loaded = ep.load()
    except Exception as e:
        raise UsageError(f"the effkit pass {ep.name!r} ({ep.value}) cannot be loaded: {first_line(e)}",
                         "fix or uninstall the package that provides it") from e
    config, run = (loaded if isinstance(loaded, tuple) and len(loaded) == 2
                   else (loaded, getattr(loaded, "run", None)))
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)) or not callable(run):
        raise UsageError(f"the effkit pass {ep.name!r} ({ep.value}) is not a config dataclass with a run function",
                         "point the entry point at a config class with `run`, or at a (config class, run) pair")
    if ep.name in SETTINGS or any(p.name == ep.name for p in BUILTIN):
        raise UsageError(f"the effkit pass {ep.name!r} ({ep.value}) takes the name of a built-in section",
                         "register it under another name")
    return Pass(ep.name, config, run, f"the {ep.name} step")


@cache
def passes() -> dict[str, Pass]:
    """Every pass by recipe section, in the order compress runs them."""
    installed = [_from_entry_point(ep) for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]
    ordered: list[Pass] = []
    for builtin in BUILTIN:
        ordered.append(builtin)
        if builtin.name == THIRD_PARTY_AFTER:
            ordered += installed
    return {p.name: p for p in ordered}


def by_section(name: str) -> Pass:
    """The pass of a recipe section; an unknown one is a usage error naming the known ones."""
    found = passes().get(name)
    if found is None:
        raise UsageError(f"unknown section [{name}]",
                         f"sections are [{'], ['.join([*passes(), *SETTINGS])}]")
    return found


def for_config(config: Any) -> Pass:
    """The pass that runs configs of this type."""
    for p in passes().values():
        if type(config) is p.config:
            return p
    raise UsageError(f"no effkit pass runs a {type(config).__name__}",
                     "use a pass config (PruneConfig, QuantizeConfig, ...) or register the pass")
