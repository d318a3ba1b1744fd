"""Is a changed model still good enough: one place for the quality metrics a bound may name, for parsing
and checking tolerances, for the pipeline's whole-run bar, and for measuring a changed model against
its original on the same inputs (`Judge`). Used by quantize (its candidates), compress (its bar) and
every command's before/after record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from effkit.errors import UsageError
from effkit.fidelity import FIDELITY_SAMPLES, accuracy, compare_outputs, held_out_inputs
from effkit.specs import Threshold, parse_threshold


# tolerance metric -> key in effkit.fidelity.compare_outputs (accuracy comes from --eval data)
METRICS = {"cosine": "cosine_min", "cosine_min": "cosine_min", "cosine_mean": "cosine_mean",
                     "sqnr": "sqnr_db", "sqnr_db": "sqnr_db", "max_abs_diff": "max_abs_diff",
                     "top1": "top1_agreement", "top1_agreement": "top1_agreement", "accuracy": "accuracy",
                     # language models: next-token choices and distributions against the original's
                     "agreement": "token_agreement", "token_agreement": "token_agreement", "kl": "kl_mean"}
# metrics where lower is better
LOWER_IS_BETTER = ("max_abs_diff", "kl")


def check_tolerance(t: Threshold) -> None:
    """Raise UsageError unless `t` bounds a fidelity metric absolutely, or accuracy in any form."""
    if t.metric not in METRICS:
        raise UsageError(f"--tolerance {t.text!r}: unknown metric {t.metric!r}",
                         "use cosine, cosine_mean, sqnr, max_abs_diff, top1, agreement, kl or accuracy, "
                         "e.g. cosine>=0.99")
    if t.metric != "accuracy" and t.kind != "absolute":
        raise UsageError(f"--tolerance {t.text!r}: {t.metric} takes an absolute bound",
                         f"e.g. {t.metric}>=0.99; only accuracy takes a change such as accuracy:-1pt")


def parse_tolerance(text: str) -> Threshold:
    """Parse and check one --tolerance value."""
    t = parse_threshold(text)
    check_tolerance(t)
    return t


def tolerance_failures(thresholds: Sequence[Threshold], fid: dict, accuracy: dict | None) -> list[str]:
    """The thresholds a result misses, each as 'TEXT (got VALUE)'; empty when it passes."""
    failures = []
    for t in thresholds:
        if t.metric == "accuracy":
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


def score(t: Threshold, fid: dict, accuracy: dict | None) -> float:
    """How well a result does on threshold `t`'s metric; higher is better."""
    if t.metric == "accuracy":
        return accuracy["after"]
    value = fid[METRICS[t.metric]]
    value = 1e9 if value == math.inf else value
    return -value if t.metric in LOWER_IS_BETTER else value


def parse_bar_tolerance(text: str) -> Threshold:
    """A whole-pipeline (compress) tolerance: a fidelity bound as for quantize, or `accuracy:-Npt`, a
    drop in points against the original."""
    t = parse_threshold(text)
    if t.metric == "accuracy" and t.kind == "points" and t.value <= 0:
        return t
    if t.metric in METRICS and t.metric != "accuracy" and t.kind == "absolute":
        return t
    raise UsageError(f"tolerance {text!r} is not supported by compress",
                     "use cosine>=X, sqnr>=DB, top1>=X, agreement>=X, kl<=X, max_abs_diff<=X or accuracy:-Npt")


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


DATA_BATCH = 32  # rows per batch when a before/after record compares outputs on real data


def held_out_batches(example, data=None, samples: int = FIDELITY_SAMPLES) -> tuple[list[tuple], str]:
    """Inputs to compare a changed model on, and where they came from: batches of `data` (real inputs,
    when given), else random inputs shaped like `example` (out of distribution for a trained model)."""
    if data is not None:
        return [inputs for inputs, _ in data.take(samples * DATA_BATCH).batches(DATA_BATCH)], data.source
    return held_out_inputs(example, samples), "random"


class Judge:
    """The original's outputs on a fixed set of inputs (and its accuracy on labelled data), and how close
    a changed model comes to them: the same inputs and the same arithmetic for every candidate and step."""

    def __init__(self, reference_runner, inputs: list[tuple], eval_data=None):
        self.inputs = inputs
        self.reference = [reference_runner.run(b) for b in inputs]
        self.eval_data = eval_data if eval_data is not None and eval_data.labels is not None else None
        self.accuracy_before = self.accuracy(reference_runner)

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


def random_inputs_warning(model, calib, eval_data) -> str | None:
    """The warning for a model of images or text judged (and calibrated) with no real data, else None."""
    kind = input_kind(model)
    if calib is not None or eval_data is not None or kind is None:
        return None
    how = ("a folder of images (--calib photos/ --image-size 224) or an .npz of preprocessed arrays"
           if kind == "images" else "an .npz of real token ids (input_ids, attention_mask, ...)")
    return (f"no real data was given, so this model of {kind} is calibrated and judged on random inputs, which "
            f"are not representative of {kind}: a verdict on them says little about real inputs; pass --calib "
            f"DATA and --eval DATA with real samples: {how}")
