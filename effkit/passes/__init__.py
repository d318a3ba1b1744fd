"""Passes: each is a frozen config dataclass (validated on construction) and one function

    run(model, config, ctx) -> PassResult

that returns a *new* Model (the original survives for the before/after comparison). `ctx` is a
`PassContext`: the data, the evaluation data, threads and timing settings, progress, and for passes
that learn from another model (distill) the teacher. Configs say what to do; the context says how to
measure it. `effkit.passes.registry` finds a pass by its config type or
its recipe section, built-in or installed through the `effkit.passes` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PassResult:
    """What a pass produced: the new Model, JSON-ready details, plain-language notes, and warnings (what
    makes its verdict less trustworthy: random inputs, a CPU without fast int8 kernels, ...).

    `kept` is False when the pass declines its own result (quantize: the int8 model is slower than
    its input and slower models were not allowed); `model` is then the input, unchanged.
    """

    model: Any
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kept: bool = True
    warnings: list[str] = field(default_factory=list)
    # runtime -> PairedResult: the pass's own paired timing of its input (A) against its output (B), on which
    # it decided (quantize: slower or not); compress reports it rather than timing the pair again, because a
    # second timing can say otherwise (the Austen int4 step: kept as "not slower", then reported 1.30x slower)
    timed: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """Everything a pass may use besides the model and its config."""

    data: Any = None  # effkit.data.Data: training or calibration data
    eval_data: Any = None  # effkit.data.Data with labels: accuracy before and after
    threads: int | None = None  # None: the pass's own default
    min_time: float | None = None  # seconds of timed calls per measurement a pass makes (None: its default)
    iterations: int | None = None  # or exactly this many timed calls
    progress: Callable[[str, float], None] | None = None  # progress(label, fraction)
    teacher: Any = None  # the Model a pass learns from (distill); compress gives the original
    data_flag: str = "--calib"  # the command's option for `data`, named in hints (compress's is --data)
