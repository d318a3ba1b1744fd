"""Passes: each takes a Model and a frozen config and returns a new Model (the original survives).

Every pass function returns a `PassResult`: the new model, step-specific details for the
report (JSON-ready), and notes to show the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PassResult:
    """What a pass produced: the new Model, JSON-ready details, and plain-language notes."""

    model: Any
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
