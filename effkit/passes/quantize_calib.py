"""Calibration data for int8 quantization: the batches static int8 and SmoothQuant calibrate on."""

from __future__ import annotations

from effkit.errors import UsageError
from effkit.fidelity import held_out_inputs
from effkit.inputs import batched

CALIBRATED = ("static", "smoothquant")  # the methods that need calibration data


def calibration_batches(model, config, calib) -> list[tuple] | None:
    """Calibration inputs as batches shaped like the example inputs (or None when there are none), for a
    `QuantizeConfig`: its method, calib_samples and random_calibration.

    Raises UsageError for static quantization without data (unless random calibration was asked
    for) and InputError when the data does not fit the model.
    """
    if calib is None and not config.random_calibration:
        if config.method in CALIBRATED:
            raise UsageError(f"--method {config.method} needs calibration data",
                             "pass --calib DATA (.npz, .pt, a folder of .npy, or module:factory), "
                             "or --calib random to calibrate on random inputs (less accurate)")
        return None
    if config.method in ("dynamic", "bf16") or (config.method == "weight-only" and config.bits == 8):
        return None  # nothing calibrated (weight-only int4 calibrates GPTQ)
    batch = max(1, model.example_inputs[0].shape[0]) if model.example_inputs and model.example_inputs[0].ndim else 1
    if calib is None:
        samples = held_out_inputs(model.example_inputs, max(1, config.calib_samples // batch), seed=7)
        return [tuple(s) for s in samples]
    calib.check_against(model)
    data = calib.take(config.calib_samples)
    inputs = [a.astype(e.dtype, copy=False) for a, e in zip(data.inputs, model.example_inputs)]
    n = len(data)
    if n < batch:  # fewer samples than the model's batch: repeat them (a fixed batch dim must be filled)
        return [batched(tuple(inputs), batch)]
    return [tuple(a[s:s + batch] for a in inputs) for s in range(0, n - batch + 1, batch)]
