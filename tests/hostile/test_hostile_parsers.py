"""Property tests: every parser turns any text into a valid value or a UsageError, never anything else.

Two kinds of text: anything at all (unicode, control characters, very long numbers), and text built
from the pieces the parsers look for, so that near-misses of the valid forms are tried too.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from effkit import specs
from effkit.errors import UsageError
from effkit.factory import is_factory_spec

PIECES = list("0123456789xX:.-+eE%<>=_ \t\n/µ٣") + [
    "nan", "inf", "1e999", "1e-999", "int64", "float16", "bfloat16", "bool", "complex64", "pt", "points",
    "MB", "KiB", "GB", "ms", "us", "s", "latency.p50", "size", "cosine", "sqnr", "accuracy", "1" * 40,
    "hf:", ".py", "mod.sub", "9" * 5000,
]
ANY_TEXT = st.text(max_size=60)
NEAR_MISSES = st.lists(st.sampled_from(PIECES), max_size=10).map("".join)
TEXTS = st.one_of(ANY_TEXT, NEAR_MISSES)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_or_usage_error(parse, text, check):
    try:
        value = parse(text)
    except UsageError as e:
        assert e.message and e.hint, f"{text!r}: an error without its fix"
        return
    check(value)


def _shape_ok(value: specs.InputShape) -> None:
    assert value.dtype in specs.DTYPES
    assert 1 <= len(value.shape) <= specs.MAX_RANK
    assert all(isinstance(d, int) and 1 <= d <= specs.MAX_DIM for d in value.shape)


def _size_ok(value: int) -> None:
    assert isinstance(value, int) and value >= 0


def _fraction_ok(value: float) -> None:
    assert isinstance(value, float) and 0.0 < value < 1.0


def _threshold_ok(value: specs.Threshold) -> None:
    assert value.metric and value.kind in ("absolute", "relative", "points")
    assert value.op in ("<=", ">=", "<", ">", "==", "+", "-")
    assert isinstance(value.value, float) and math.isfinite(value.value)


@SETTINGS
@given(TEXTS)
@example("9" * 5000)  # int() refuses more than 4300 digits: once a ValueError, now a usage error
@example("1x" * 100 + "1")
@example("int64:0x5")
@example("complex64:1x3")
def test_parse_input_shape(text):
    _valid_or_usage_error(specs.parse_input_shape, text, _shape_ok)


@SETTINGS
@given(TEXTS)
@example("1e999MB")
@example("nan")
def test_parse_size(text):
    _valid_or_usage_error(specs.parse_size, text, _size_ok)


@SETTINGS
@given(TEXTS)
@example("nan")
@example("inf%")
@example("1e-999")
def test_parse_ratio(text):
    _valid_or_usage_error(specs.parse_ratio, text, _fraction_ok)


@SETTINGS
@given(TEXTS)
@example("0.5x")
@example("1e999x")
def test_parse_factor(text):
    _valid_or_usage_error(lambda t: specs.parse_factor(t, "target"), text, _fraction_ok)


@SETTINGS
@given(TEXTS)
@example("latency.p50:+1e999%")
@example("size:<=nanMB")
@example("cosine>=")
@example(":<=1")
def test_parse_threshold(text):
    _valid_or_usage_error(specs.parse_threshold, text, _threshold_ok)


@SETTINGS
@given(TEXTS)
def test_is_factory_spec_never_raises(text):
    assert is_factory_spec(text) in (True, False)


@pytest.mark.parametrize("text, expected", [
    ("0x16", "input shape '0x16' has a zero or negative dimension (every dimension must be at least 1)"),
    ("1x-3", "input shape '1x-3' has a zero or negative dimension (every dimension must be at least 1)"),
    ("complex64:1x16", "unknown dtype 'complex64' in input shape 'complex64:1x16' (use one of float32, float16, "
                       "bfloat16, float64, int64, int32, int16, int8, uint8, bool)"),
    ("1x3x", "cannot parse input shape '1x3x' (write dimensions separated by 'x', e.g. 1x3x224x224 or "
             "int64:1x128)"),
    ("4294967296x1", "input shape '4294967296x1' has an absurd dimension (each dimension must be at most "
                     "2147483647)"),
])
def test_bad_input_shapes_name_the_fix(text, expected):
    with pytest.raises(UsageError) as info:
        specs.parse_input_shape(text)
    assert str(info.value) == expected


@pytest.mark.parametrize("text, expected", [
    ("latency.p50:+5", "cannot parse threshold 'latency.p50:+5' (write METRIC:+5%, METRIC:-0.5pt or METRIC<=VALUE, "
                       "e.g. latency.p50:+5% or size:<=12MB)"),
    ("size:<=12XB", "unknown unit 'XB' in threshold 'size:<=12XB' (use B/KB/MB/GB/KiB/MiB/GiB, ns/us/ms/s, %, or pt "
                    "(with + or -))"),
    ("size:<=1e999MB", "'size:<=1e999MB' is not a finite number (write an ordinary number, e.g. 12MB, 5% or 0.99)"),
])
def test_bad_thresholds_name_the_fix(text, expected):
    with pytest.raises(UsageError) as info:
        specs.parse_threshold(text)
    assert str(info.value) == expected


# ---------------------------------------------------------------- recipes (effkit compress --recipe)

RECIPE_LINES = [
    "[prune]", "[quantize]", "[distill]", "[export]", "[pipeline]", "[bench]", "[nope]", "[[prune]]",
    "ratio = 0.5", "ratio = 2", 'ratio = "50%"', "ratio = nan", "ratio = inf", "ratio = []", "ratio = {a = 1}",
    'method = "int8"', "method = 3", "opset = 99", "epochs = -1", "epochs = 1.5", "epochs = 99999999999999999999",
    'max_accuracy_drop = "1pt"', 'max_accuracy_drop = "x"', 'tolerance = "cosine>=0.99"', 'tolerance = ["cosine>="]',
    'tolerance = "size:<=1MB"', "unknown = 1", "= 1", 'steps = ["prune"]', "batch_sizes = [0]", 'lr = "fast"',
    "calib_samples = 0", "a.b = 1", "ratio = 1979-05-27", "\x00",
    "min-time = nan", "min_time = inf", "warmup = -1", "iterations = 0", "candidate-time = inf", "lr = -inf",
    "calib-samples = 100000000000000000000", "calib-samples = 1e20", "ratio = 1e400", "threads = 9223372036854775808",
    "\ufeff[bench]", "warmup = " + "9" * 5000,
]
RECIPES = st.one_of(ANY_TEXT, st.lists(st.sampled_from(RECIPE_LINES), max_size=8).map("\n".join))


@SETTINGS
@given(RECIPES)
@example("[prune]\nratio = 0.5\nratio = 0.6")  # a duplicate key: TOML's own error, reworded
def test_recipe_parse(text):
    from effkit.errors import EffkitError
    from effkit.recipe import Recipe

    try:
        recipe = Recipe.parse(text)
    except EffkitError as e:
        assert e.exit_code == 2 and e.message
        return
    assert isinstance(recipe.steps, list)
    for section, values in recipe.to_dict().items():  # what a recipe lets through is a usable number
        for key, value in values.items():
            for v in value if isinstance(value, list) else [value]:
                assert not isinstance(v, float) or math.isfinite(v), (section, key, v)
                assert not isinstance(v, int) or abs(v) <= specs.MAX_INT, (section, key)


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.integers(min_value=2**62, max_value=2**70), st.booleans(), st.text(max_size=5),
                    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3))


@SETTINGS
@given(NUMBERS)
@example(2**63)
@example(10**5000)  # str() of it would raise: the message must not print it
def test_check_number(value):
    def check(v):
        specs.check_number("--x", v)
        return v

    def ok(v):
        for item in v if isinstance(v, list) else [v]:
            assert not isinstance(item, float) or math.isfinite(item)
            assert isinstance(item, bool) or not isinstance(item, int) or abs(item) <= specs.MAX_INT

    _valid_or_usage_error(check, value, ok)


# ---------------------------------------------------------------- gate result documents

# Any JSON built from the keys that effkit gate reads: a verdict, or a usage error that says what to fix.
GATE_KEYS = ["schema", "metrics", "latency", "p50", "size", "accuracy", "runs", "samples_ms", "contention", "busy",
             "other_cpu_cores", "environment", "calibration_ms", "cpu", "versions", "model", "source", "warnings",
             "before", "after", "pairs", "a_ms", "b_ms", "ratios", "latency.p50", "ratio", "ci", "baseline_metrics",
             "states", "bench", "runtime", "batch_size"]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from(["inf", "-inf", "nan", "x", "1.5"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(GATE_KEYS), children, max_size=5)),
    max_leaves=25)
GATE_DOCS = st.builds(lambda schema, rest: {**rest, "schema": schema},
                      st.sampled_from(["effkit.bench/1", "effkit.step/1", "effkit.compare/1", "effkit.compress/1"]),
                      st.dictionaries(st.sampled_from(GATE_KEYS), JSON_VALUES, max_size=6))
GATES = ["latency.p50:<=1ms", "latency.p50:+5%", "size:<=1MB", "accuracy:-1pt", "throughput:-5%",
         "normalized_latency.p50:+5%", "runs.0.samples_ms.0:<=1ms"]


@SETTINGS
@given(GATE_DOCS, st.one_of(st.none(), GATE_DOCS), st.lists(st.sampled_from(GATES), min_size=1, max_size=3))
@example({"schema": "effkit.bench/1", "metrics": {"latency": {"p50": -1.0}}}, None, ["latency.p50:<=1ms"])
@example({"schema": "effkit.bench/1", "metrics": {"size": "-inf"}}, None, ["size:<=1MB"])
def test_gate_on_any_document(doc, baseline, gates):
    from effkit.errors import EffkitError
    from effkit.gates import gate

    try:
        report = gate(doc, gates, baseline)
    except EffkitError as e:
        assert e.exit_code == 2 and e.message
        return
    for verdict in report.verdicts:  # a verdict stands on numbers that can be measured
        for number in (verdict.value, verdict.baseline):
            assert number is None or not math.isnan(number)
            if verdict.threshold.metric.split(".")[0] in ("latency", "size", "throughput") and number is not None:
                assert 0 <= number < math.inf, verdict


@SETTINGS
@given(TEXTS)
def test_recipe_tolerance(text):
    from effkit.judge import parse_bar_tolerance as parse_tolerance

    _valid_or_usage_error(parse_tolerance, text, _threshold_ok)


def _points_ok(value: float) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value >= 0


@SETTINGS
@given(TEXTS)
def test_recipe_accuracy_drop(text):
    from effkit.recipe import parse_accuracy_drop

    _valid_or_usage_error(parse_accuracy_drop, text, _points_ok)


def test_accuracy_drop_too_big_to_be_finite_is_refused():
    from effkit.recipe import parse_accuracy_drop

    with pytest.raises(UsageError):
        parse_accuracy_drop("9" * 400)
