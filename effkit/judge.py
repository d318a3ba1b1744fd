"""Is a changed model still good enough: one place for the quality metrics a bound may name, for parsing
and checking tolerances, for the pipeline's whole-run bar, and for measuring a changed model against
its original on the same inputs (`Judge`). Used by quantize (its candidates), compress (its bar) and
every command's before/after record.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from effkit.errors import UsageError
from effkit.fidelity import FIDELITY_SAMPLES, accuracy, compare_outputs, held_out_inputs, perplexity
from effkit.specs import Threshold, _finite, parse_threshold


# tolerance metric -> key in effkit.fidelity.compare_outputs (accuracy comes from --eval data)
METRICS = {"cosine": "cosine_min", "cosine_min": "cosine_min", "cosine_mean": "cosine_mean",
                     "sqnr": "sqnr_db", "sqnr_db": "sqnr_db", "max_abs_diff": "max_abs_diff",
                     "top1": "top1_agreement", "top1_agreement": "top1_agreement", "accuracy": "accuracy",
                     # language models: next-token choices and distributions against the original's
                     "agreement": "token_agreement", "token_agreement": "token_agreement", "kl": "kl_mean",
                     # language models on --eval-text, like accuracy on --eval: before and after, not a comparison
                     "perplexity": "perplexity", "ppl": "perplexity"}
# metrics where lower is better
LOWER_IS_BETTER = ("max_abs_diff", "kl", "perplexity", "ppl")
# metrics measured before and after on data (not outputs against the original's), bounded absolutely or by a change
ON_DATA = ("accuracy", "perplexity", "ppl")


def check_tolerance(t: Threshold) -> None:
    """Raise UsageError unless `t` bounds a fidelity metric absolutely, or accuracy in any form."""
    if t.metric not in METRICS:
        raise UsageError(f"--tolerance {t.text!r}: unknown metric {t.metric!r}",
                         "use cosine, cosine_mean, sqnr, max_abs_diff, top1, agreement, kl, accuracy or perplexity, "
                         "e.g. cosine>=0.99")
    if t.metric not in ON_DATA and t.kind != "absolute":
        raise UsageError(f"--tolerance {t.text!r}: {t.metric} takes an absolute bound",
                         f"e.g. {t.metric}>=0.99; only accuracy and perplexity take a change such as accuracy:-1pt "
                         "or perplexity:+5%")
    if t.metric in ("perplexity", "ppl") and t.kind == "points":
        raise UsageError(f"--tolerance {t.text!r}: perplexity is no percentage",
                         "bound its change in percent (perplexity:+5%) or its value (perplexity<=30)")


def parse_tolerance(text: str) -> Threshold:
    """Parse and check one --tolerance value."""
    t = parse_threshold(text)
    check_tolerance(t)
    return t


def tolerance_failures(thresholds: Sequence[Threshold], fid: dict, accuracy: dict | None,
                       perplexity: dict | None = None) -> list[str]:
    """The thresholds a result misses, each as 'TEXT (got VALUE)'; empty when it passes."""
    failures = []
    for t in thresholds:
        if t.metric in ("perplexity", "ppl"):
            if perplexity is None:
                raise UsageError(f"--tolerance {t.text!r} needs text to measure perplexity on",
                                 "pass --eval-text FILE (a .txt or .jsonl file)")
            before, after = perplexity["before"], perplexity["after"]
            if t.kind == "absolute":
                ok, got = t.holds(after), f"{after:.4g}"
            else:  # perplexity:+5% allows it to grow by 5%
                change = after / before - 1
                ok, got = change <= t.value, f"{100 * change:+.2f}%"
        elif t.metric == "accuracy":
            before, after = accuracy["before"], accuracy["after"]
            if t.kind == "absolute":
                ok, got = t.holds(after), f"{100 * after:.2f}%"
            elif t.kind == "points":
                change = 100 * (after - before)
                ok, got = change >= t.value, f"{change:+.2f} pt"
            else:
                change = after / before - 1 if before else 0.0
                ok, got = change >= t.value, f"{100 * change:+.2f}%"
        else:
            value = fid.get(METRICS[t.metric])
            if value is None:
                applies = ("language models ([batch, sequence, vocabulary] logits)"
                           if t.metric in ("agreement", "token_agreement", "kl") else "classifiers ([batch, classes] outputs)")
                raise UsageError(f"--tolerance {t.text!r}: {t.metric} applies to {applies}",
                                 "use cosine or sqnr for this model")
            ok, got = t.holds(value), f"{value:.5g}"
        if not ok:
            failures.append(f"{t.text} (got {got})")
    return failures


def score(t: Threshold, fid: dict, accuracy: dict | None, perplexity: dict | None = None) -> float:
    """How well a result does on threshold `t`'s metric; higher is better."""
    if t.metric == "accuracy":
        return accuracy["after"]
    if t.metric in ("perplexity", "ppl"):
        return -perplexity["after"]
    value = fid[METRICS[t.metric]]
    value = 1e9 if value == math.inf else value
    return -value if t.metric in LOWER_IS_BETTER else value


def parse_bar_tolerance(text: str) -> Threshold:
    """A whole-pipeline (compress) tolerance: a fidelity bound as for quantize, or `accuracy:-Npt`, a
    drop in points against the original."""
    t = parse_threshold(text)
    if t.metric == "accuracy" and t.kind == "points" and t.value <= 0:
        return t
    if t.metric in METRICS and t.metric not in ON_DATA and t.kind == "absolute":
        return t
    raise UsageError(f"tolerance {text!r} is not supported by compress",
                     "use cosine>=X, sqnr>=DB, top1>=X, agreement>=X, kl<=X, max_abs_diff<=X or accuracy:-Npt")


DEFAULT_MAX_ACCURACY_DROP = "1pt"  # the bar with labelled --eval data, unless the user sets another
DEFAULT_FIDELITY_BAR = "cosine>=0.99"  # the bar without labels (outputs against the original's)
DEFAULT_PERPLEXITY_BAR = "perplexity:+5%"  # the bar of a language model measured on --eval-text
OFF = "none"  # `--max-accuracy-drop none` / `--tolerance none`: no such bar


def parse_accuracy_drop(text: str) -> float | None:
    """`1pt`, `0.5 pt` or `1` (percentage points of accuracy) as a number of points; `none`: None (off)."""
    if str(text).strip().lower() == OFF:
        return None
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(pt|pts|points?)?\s*", str(text).lower())
    if not m:
        raise UsageError(f"cannot parse max-accuracy-drop {text!r}",
                         "write percentage points of accuracy, e.g. 1pt or 0.5pt, or none to switch the bar off")
    return _finite(float(m.group(1)), str(text))


@dataclass(frozen=True)
class QualityBar:
    """The bar a changed model must meet against its original: an accuracy drop in points (on labelled
    data) and fidelity bounds on its outputs. `source` says where it came from, for the reports."""

    max_drop_pt: float | None
    bounds: tuple[Threshold, ...]
    source: str  # "default" or "set"

    def describe(self) -> str:
        parts = ([f"accuracy drop <= {self.max_drop_pt:g} pt"] if self.max_drop_pt is not None else [])
        parts += [b.text for b in self.bounds]
        return (" and ".join(parts) or "none") + (" (default)" if self.source == "default" else "")


def quality_bar(max_accuracy_drop: str | None, tolerance: Sequence[str], labelled: bool,
                text: bool = False) -> QualityBar:
    """The bar in force for a command that changes a model: what the user set, else the default: with
    labelled evaluation data an accuracy drop of at most DEFAULT_MAX_ACCURACY_DROP, with text for a
    language model's perplexity (`text`) DEFAULT_PERPLEXITY_BAR, else DEFAULT_FIDELITY_BAR on held-out
    inputs. `none` switches a bar off (`--max-accuracy-drop none`,
    `--tolerance none`); `accuracy:-Npt` tolerances count as accuracy drops, other bounds (fidelity, and
    for quantize absolute or relative accuracy) stay bounds."""
    tolerance_off = any(str(t).strip().lower() == OFF for t in tolerance)
    tolerance = [t for t in tolerance if isinstance(t, Threshold) or str(t).strip().lower() != OFF]
    bounds = [t if isinstance(t, Threshold) else parse_tolerance(t) for t in tolerance]
    is_drop = lambda t: t.metric == "accuracy" and t.kind == "points"  # noqa: E731
    drops = [-t.value for t in bounds if is_drop(t)]
    fidelity = tuple(t for t in bounds if not is_drop(t))
    if max_accuracy_drop is not None:
        explicit = parse_accuracy_drop(max_accuracy_drop)
        drops += [explicit] if explicit is not None else []
    elif labelled:
        drops.append(parse_accuracy_drop(DEFAULT_MAX_ACCURACY_DROP))
    max_drop = min(drops) if drops else None
    set_by_user = max_accuracy_drop is not None or bool(tolerance)
    if not set_by_user and not labelled and not tolerance_off:
        return QualityBar(None, (parse_threshold(DEFAULT_PERPLEXITY_BAR if text else DEFAULT_FIDELITY_BAR),), "default")
    return QualityBar(max_drop, fidelity, "set" if set_by_user else "default")


def bar_violations(max_drop_pt: float | None, bounds: Sequence[Threshold], accuracy_before: float | None,
                   accuracy_after: float | None, fid: dict | None) -> list[str]:
    """How a result breaks a whole-pipeline bar (an accuracy drop in points and fidelity bounds against
    the original); empty when it holds. A bound whose metric was not measured does not apply."""
    found = []
    if max_drop_pt is not None and accuracy_after is not None and accuracy_before is not None:
        drop = 100 * (accuracy_before - accuracy_after)
        if drop > max_drop_pt + 1e-9:
            found.append(f"accuracy dropped {drop:.2f} pt (at most {max_drop_pt:g} pt allowed)")
    for bound in bounds:
        value = (fid or {}).get(METRICS[bound.metric])
        if value is not None and not bound.holds(value):
            found.append(f"{bound.metric} is {value:.4g}, breaking {bound.text}")
    return found


JUDGE_ROWS = 512  # at most this many rows of real data are compared (all of them when fewer)
HELD_OUT_FRACTION = 0.25  # of --calib, kept out of calibration to judge on when there is no --eval


def judging_split(fit_data, eval_data):
    """Which data fits a model (calibrates, fine-tunes, decides back-off) and which judges it, never the
    same: (fit, judged). `eval_data` judges when given; else a seeded quarter of `fit_data` is held out
    of fitting to judge on (when it has at least 2 samples); else `judged` is None (fresh inputs)."""
    if eval_data is not None or fit_data is None:
        return fit_data, eval_data
    if len(fit_data) < 2:
        return fit_data, None
    fit, held_out = fit_data.split(HELD_OUT_FRACTION, seed=0)
    return fit, type(held_out)(held_out.inputs, held_out.labels, f"held-out part of {fit_data.source}")


@dataclass(frozen=True)
class Splits:
    """compress's data, each part for one purpose: `fit` trains and calibrates (the passes' --data),
    `decide` drives back-off (does this step still meet the bar?), `verdict` gives the final verdict and
    every figure reported. None: no such data (fresh random inputs stand in for `decide` and `verdict`,
    drawn with other seeds). `note` says, when it is so, that back-off was decided on the verdict's data."""

    fit: object
    decide: object
    verdict: object
    note: str | None = None


def pipeline_splits(data, eval_data, needs_labels: bool) -> Splits:
    """Split compress's data so that no decision is made on the data the verdict is made on, and neither
    on data a pass fitted on: a seeded part of `data` (a quarter, at most JUDGE_ROWS samples) is held out
    of fitting to decide back-off on, and `eval_data`, all of it, judges; without `eval_data` the held-out
    part is cut in two, one half to decide, one to judge. `needs_labels`: the bar bounds accuracy, so the
    decisions need labelled data; when `data` has none (or is too small to split), back-off is decided on
    `eval_data` and the note says so."""
    usable = data is not None and len(data) >= 4 and (data.labels is not None or not needs_labels)
    if not usable:
        why = ("--data has no labels for the accuracy bar" if data is not None and len(data) >= 4 else
               "--data is too small to hold part of it out" if data is not None else "there is no --data")
        if eval_data is not None:
            note = (f"back-off was decided on {eval_data.source}, the data the verdict is made on, because {why}: "
                    "pass labelled --data to decide on data held out from it")
        else:
            note = f"back-off was decided on fresh random inputs, other ones than the verdict's, because {why}"
        return Splits(data, eval_data, eval_data, note)
    held = min(max(2, round(HELD_OUT_FRACTION * len(data))), JUDGE_ROWS * (1 if eval_data is not None else 2),
               len(data) - 2)
    fit, held_out = data.split(held / len(data), seed=0)
    if eval_data is not None:
        return Splits(fit, dataclasses.replace(held_out, source=f"held-out part of {data.source}"), eval_data)
    decide, verdict = held_out.split(0.5, seed=1)
    return Splits(fit, dataclasses.replace(decide, source=f"held-out part of {data.source} (back-off)"),
                  dataclasses.replace(verdict, source=f"held-out part of {data.source} (verdict)"))


def held_out_batches(example, data=None, samples: int = FIDELITY_SAMPLES) -> tuple[list[tuple], str]:
    """Inputs to judge a changed model on, and where they came from: `data` (up to JUDGE_ROWS rows, in
    batches of the example's batch size, so that a fixed batch dimension fits and the minimum is over
    the same samples for every judge), else `samples` batches of random inputs shaped like `example`
    (out of distribution for a trained model)."""
    if data is None:
        return held_out_inputs(example, samples), "random"
    batch = example[0].shape[0] if example and example[0].ndim and example[0].shape[0] > 0 else 1
    rows = data.take(JUDGE_ROWS)
    inputs = [a.astype(e.dtype, copy=False) for a, e in zip(rows.inputs, example)]
    found = [tuple(a[s:s + batch] for a in inputs) for s in range(0, len(rows) - batch + 1, batch)]
    return (found or held_out_inputs(example, samples)), (data.source if found else "random")


class Judge:
    """The original's outputs on a fixed set of inputs (and its accuracy on labelled data), and how close
    a changed model comes to them: the same inputs and the same arithmetic for every candidate and step."""

    def __init__(self, reference_runner, inputs: list[tuple], eval_data=None, text=None):
        self.inputs = inputs
        self.reference = [reference_runner.run(b) for b in inputs]
        self.eval_data = eval_data if eval_data is not None and eval_data.labels is not None else None
        self.accuracy_before = self.accuracy(reference_runner)
        self.text = text  # windows of token ids (effkit.data.load_text_stream) for a language model's perplexity
        # in batches of the inputs' batch size: an exported model may take no other
        self.text_batch = len(inputs[0][0]) if inputs and inputs[0] and getattr(inputs[0][0], "ndim", 0) else 1
        self.perplexity_before = perplexity(reference_runner, text.inputs, self.text_batch) if text is not None else None

    def fidelity(self, runner) -> dict:
        """Agreement of `runner`'s outputs with the original's (effkit.fidelity.compare_outputs)."""
        return compare_outputs(self.reference, [runner.run(b) for b in self.inputs])

    def accuracy(self, runner) -> float | None:
        """Top-1 accuracy on the labelled evaluation data; None without labels."""
        if self.eval_data is None:
            return None
        return accuracy(runner, self.eval_data.inputs, self.eval_data.labels)

    def accuracy_change(self, runner) -> dict | None:
        """{"before": the original's accuracy, "after": runner's}; None without labels."""
        if self.eval_data is None:
            return None
        return {"before": self.accuracy_before, "after": self.accuracy(runner)}

    def perplexity_change(self, runner) -> dict | None:
        """{"before", "after": perplexity on the text, "tokens": tokens predicted, "source"}; None without text."""
        if self.text is None:
            return None
        after, tokens = perplexity(runner, self.text.inputs, self.text_batch)
        return {"before": self.perplexity_before[0], "after": after, "tokens": tokens, "source": self.text.source}


def input_kind(model) -> str | None:
    """"images" or "text" when the model's inputs look like them (a float NCHW batch with 1-4 channels;
    integer token ids), else None: what random inputs misrepresent most."""
    arrays = model.example_inputs
    if any(np.issubdtype(a.dtype, np.integer) and a.ndim == 2 for a in arrays) or \
            any(n in ("input_ids", "token_ids", "tokens") for n in model.input_names):
        return "text"
    if any(np.issubdtype(a.dtype, np.floating) and a.ndim == 4 and a.shape[1] in (1, 3, 4) for a in arrays):
        return "images"
    return None


def random_inputs_warning(model, calib, eval_data, data_flag: str = "--calib") -> str | None:
    """The warning for a model of images or text judged (and calibrated) with no real data, else None.
    `data_flag`: the option that gives the command its data (compress takes --data, not --calib)."""
    kind = input_kind(model)
    if calib is not None or eval_data is not None or kind is None:
        return None
    how = (f"a folder of images ({data_flag} photos/ --image-size 224) or an .npz of preprocessed arrays"
           if kind == "images" else "an .npz of real token ids (input_ids, attention_mask, ...)")
    return (f"no real data was given, so this model of {kind} is calibrated and judged on random inputs, which "
            f"are not representative of {kind}: a verdict on them says little about real inputs; pass {data_flag} "
            f"DATA and --eval DATA with real samples: {how}")
