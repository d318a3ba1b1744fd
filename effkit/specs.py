"""Pure parsing of what users type: input shapes, sizes, ratios, thresholds. No torch here.

Every parser either returns a valid value or raises `UsageError` with a message that names
the bad text and shows the expected form (hypothesis tests hold every parser to this).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from effkit.errors import UsageError

# numpy dtype names accepted in `--input-shape DTYPE:SHAPE`
DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "int64", "int32", "int16", "int8", "uint8", "bool",
)
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "fp16": "float16", "half": "float16",
                  "bf16": "bfloat16", "double": "float64", "long": "int64", "int": "int64"}
# A single dimension above this is certainly a typo (and would not fit in memory anyway).
MAX_DIM = 2**31 - 1
MAX_RANK = 32  # numpy arrays have at most 64 dimensions; no model input has more than a handful


@dataclass(frozen=True)
class InputShape:
    """One model input: dtype name and concrete shape."""

    dtype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.dtype}:{'x'.join(map(str, self.shape))}"


def parse_input_shape(text: str) -> InputShape:
    """Parse `1x3x224x224` or `int64:1x128` (dtype defaults to float32)."""
    raw = text
    text = text.strip()
    dtype = "float32"
    if ":" in text:
        dtype_text, text = text.split(":", 1)
        dtype = _DTYPE_ALIASES.get(dtype_text.strip().lower(), dtype_text.strip().lower())
        if dtype not in DTYPES:
            raise UsageError(f"unknown dtype {dtype_text!r} in input shape {raw!r}",
                             f"use one of {', '.join(DTYPES)}")
    parts = text.lower().split("x")
    if len(parts) > MAX_RANK:
        raise UsageError(f"input shape {raw[:60]!r}... has {len(parts)} dimensions", f"give at most {MAX_RANK}")
    # at most 12 digits: longer numbers are absurd, and int() refuses some (its 4300-digit limit)
    if not text or any(not re.fullmatch(r"\s*-?\d{1,12}\s*", p) for p in parts):
        raise UsageError(f"cannot parse input shape {raw!r}",
                         "write dimensions separated by 'x', e.g. 1x3x224x224 or int64:1x128")
    dims = tuple(int(p) for p in parts)
    if any(d <= 0 for d in dims):
        raise UsageError(f"input shape {raw!r} has a zero or negative dimension",
                         "every dimension must be at least 1")
    if any(d > MAX_DIM for d in dims):
        raise UsageError(f"input shape {raw!r} has an absurd dimension", f"each dimension must be at most {MAX_DIM}")
    return InputShape(dtype, dims)


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
               "kib": 2**10, "mib": 2**20, "gib": 2**30}
_TIME_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?|\.[0-9]+(?:e[+-]?[0-9]+)?"


def _finite(value: float, raw: str) -> float:
    if not math.isfinite(value):
        raise UsageError(f"{raw!r} is not a finite number", "write an ordinary number, e.g. 12MB, 5% or 0.99")
    return value


# No count, seed or size effkit hands to numpy, torch or ONNX Runtime may exceed int64.
MAX_INT = 2**63 - 1


def check_number(name: str, value: Any) -> None:
    """Refuse NaN and infinity (NaN slips past every `if x < 0` check) and integers beyond int64 in the
    option or recipe key `name`; lists and tuples item by item; anything that is not a number passes."""
    if isinstance(value, (list, tuple)):
        for item in value:
            check_number(name, item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}", "write an ordinary number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        # not printed: int() and str() refuse numbers of more than 4300 digits
        raise UsageError(f"{name} is a {value.bit_length()}-bit number, too large for any count or size",
                         f"write an ordinary number, at most {MAX_INT}")


def check_numbers(config: Any) -> None:
    """`check_number` on every field of a config dataclass, each named as its command-line option."""
    for f in dataclasses.fields(config):
        check_number(f"--{f.name.replace('_', '-')}", getattr(config, f.name))


def parse_size(text: str) -> int:
    """Parse a byte size such as `12MB`, `3.5 MiB` or `1000` into bytes."""
    m = re.fullmatch(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise UsageError(f"cannot parse size {text!r}", "write e.g. 12MB, 500KiB or 1GB")
    return int(_finite(float(m.group(1)), text) * _SIZE_UNITS[unit])


def parse_ratio(text: str | float, name: str = "ratio") -> float:
    """Parse a fraction strictly between 0 and 1 (`0.5`, or `50%`)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"cannot parse {name} {raw!r}", "write a number between 0 and 1, e.g. 0.5") from None
    if not (0.0 < value < 1.0):
        raise UsageError(f"{name} must be between 0 and 1 (exclusive), got {raw}", "e.g. 0.5 removes half")
    return value


def parse_block_ratios(text: str, blocks: tuple[str, ...], name: str = "--ratio") -> dict[str, float] | None:
    """Per-block-type ratios, `heads=0.25,ffn=0.5` -> {"heads": 0.25, "ffn": 0.5} (a block type left out: 0,
    kept whole); None when `text` is a single ratio (`parse_ratio` reads it)."""
    if "=" not in str(text):
        return None
    found = dict.fromkeys(blocks, 0.0)
    for part in str(text).split(","):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key not in blocks:
            raise UsageError(f"unknown block type {key!r} in {name} {text!r}",
                             f"name {' and '.join(blocks)}, e.g. {name} {blocks[0]}=0.25,{blocks[-1]}=0.5")
        raw = value.strip()
        try:
            zero = float(raw.rstrip("%")) == 0
        except ValueError:
            zero = False
        found[key] = 0.0 if zero else parse_ratio(raw, f"{name} {key}")
    if not any(found.values()):
        raise UsageError(f"{name} {text!r} removes nothing", "give at least one block type a ratio above 0")
    return found


def parse_factor(text: str, name: str) -> float:
    """Parse a target factor such as `0.5x` (relative to the original) into 0.5."""
    raw = text.strip()
    m = re.fullmatch(rf"({_NUMBER})\s*x?", raw.lower())
    if not m:
        raise UsageError(f"cannot parse {name} {text!r}", "write a factor of the original, e.g. 0.5x")
    value = float(m.group(1))
    if not (0.0 < value < 1.0):
        raise UsageError(f"{name} must be below 1x and above 0x, got {text!r}", "e.g. 0.5x halves it")
    return value


@dataclass(frozen=True)
class Threshold:
    """A parsed bound on one metric.

    kind:
      - "absolute": metric OP value (value in the metric's base unit: bytes, ms, or plain number)
      - "relative": the metric may change by at most `value` (a fraction, signed) against a baseline
      - "points":   the metric may change by at most `value` percentage points (signed) against a baseline
    """

    metric: str
    kind: str
    op: str
    value: float
    text: str

    def holds(self, value: float) -> bool:
        """Whether `value` satisfies this threshold's operator and bound."""
        return COMPARATORS[self.op](value, self.value)

    def __str__(self) -> str:
        return self.text


# comparison operators of absolute thresholds; the parser tries the two-character ones first
COMPARATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_OPS = tuple(COMPARATORS)
_METRIC = r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*"


def _parse_value_unit(text: str, raw: str) -> float:
    m = re.fullmatch(rf"\s*(-?(?:{_NUMBER}))\s*([a-zA-Zµ%]*)\s*", text)
    if not m:
        raise UsageError(f"cannot parse the value in threshold {raw!r}",
                         "write e.g. size:<=12MB, latency.p50:<=3ms or cosine>=0.99")
    value = _finite(float(m.group(1)), raw)
    unit = m.group(2).lower()
    if unit in ("", "x"):
        return value
    if unit == "%":
        return value / 100.0
    if unit in _SIZE_UNITS:
        return value * _SIZE_UNITS[unit]
    if unit in _TIME_UNITS:
        return value * _TIME_UNITS[unit]
    raise UsageError(f"unknown unit {m.group(2)!r} in threshold {raw!r}",
                     "use B/KB/MB/GB/KiB/MiB/GiB, ns/us/ms/s, %, or pt (with + or -)")


def parse_threshold(text: str) -> Threshold:
    """Parse one gate or tolerance threshold.

    Forms: `latency.p50:+5%` (may rise 5% over the baseline), `throughput:-10%`,
    `accuracy:-0.5pt` (may drop half a point), `size:<=12MB`, `latency.p50:<=3ms`,
    `cosine>=0.99`, `sqnr>=20`.
    """
    raw = text
    text = text.strip()
    m = re.fullmatch(rf"({_METRIC})\s*:?\s*(.+)", text)
    if not m:
        raise UsageError(f"cannot parse threshold {raw!r}",
                         "write METRIC:+5%, METRIC:-0.5pt or METRIC<=VALUE, e.g. latency.p50:+5% or size:<=12MB")
    metric, rest = m.group(1), m.group(2).strip()
    rel = re.fullmatch(rf"([+-])\s*({_NUMBER})\s*(%|pt|pts|points?)", rest.lower())
    if rel:
        sign = 1.0 if rel.group(1) == "+" else -1.0
        amount = _finite(float(rel.group(2)), raw)
        if rel.group(3) == "%":
            return Threshold(metric, "relative", rel.group(1), sign * amount / 100.0, raw.strip())
        return Threshold(metric, "points", rel.group(1), sign * amount, raw.strip())
    for op in _OPS:
        if rest.startswith(op):
            value = _parse_value_unit(rest[len(op):], raw)
            return Threshold(metric, "absolute", op, value, raw.strip())
    raise UsageError(f"cannot parse threshold {raw!r}",
                     "write METRIC:+5%, METRIC:-0.5pt or METRIC<=VALUE, e.g. latency.p50:+5% or size:<=12MB")
