"""Runners: the one interface through which every benchmark and fidelity check runs a model.

A Runner's `run(inputs)` gives numpy outputs and its `bind(inputs)` a zero-argument call for
timing, with the inputs already converted, so a timing measures the model and not the conversion.
`native_runner(model)` runs a model on its own runtime; `effkit.export.make_runner` also runs a
torch model on ONNX Runtime, through its verified export.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.env import available_cores
from effkit.errors import InputError, ModelLoadError, UsageError
from effkit.limits import check_threads

RUNTIMES = ("torch", "onnxruntime")

# ONNX Runtime's C++ logger writes to stderr on its own, before the exception it raises (external
# data out of bounds, an allocation of terabytes): effkit reports those as one `Error:` line, so the
# logger says nothing unless asked (`effkit --debug`). Severities: 0 verbose ... 2 warning ... 4 fatal.
_ORT_LOG = {"severity": 4}


def set_onnxruntime_logging(verbose: bool) -> None:
    """Let ONNX Runtime's own log (warnings and errors) through, or keep it quiet (the default)."""
    _ORT_LOG["severity"] = 2 if verbose else 4


def import_onnxruntime() -> Any:
    """`onnxruntime`, with its default logger at effkit's severity: every session made after this,
    effkit's own and those of onnxruntime.quantization, logs only as much as that."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(_ORT_LOG["severity"])
    return onnxruntime


def onnxruntime_message(e: BaseException) -> str:
    """An ONNX Runtime exception's message without its status prefix and C++ source locations."""
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(e))
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ (?:[\w:*&<>]+ )?[\w:~<>]+\([^)]*\) ", "", text)  # file:line signature(...)
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ \w+ ", "", text)  # file:line FunctionName
    # an input of the wrong size: ORT names the input on one line and the axis and sizes on the next
    wrong = re.search(r"Got invalid dimensions for input: (\S+) for the following indices\s+index: (\d+) Got: (\d+) "
                      r"Expected: (\d+)", text)
    if wrong:
        name, axis, got, expected = wrong.groups()
        return f"input {name!r} has size {got} on axis {axis}; the model takes {expected} there"
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _is_onnxruntime_error(e: BaseException) -> bool:
    return type(e).__module__.startswith("onnxruntime")


class Runner:
    """Runs one model on one runtime with a fixed number of threads."""

    name: str
    threads: int

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        raise NotImplementedError

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class TorchRunner(Runner):
    """torch eager (or whatever the module is: TorchScript, torch.export module, quantized)."""

    name = "torch"

    def __init__(self, module: Any, threads: int | None = None):
        import torch

        check_threads(threads)
        self.module = module
        # None: whatever torch uses now (OMP_NUM_THREADS, torchrun's setting), left untouched
        self.threads = threads or torch.get_num_threads()

    def _tensors(self, inputs: Sequence[np.ndarray]) -> tuple:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs)

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        import torch

        tensors = self._tensors(inputs)
        module = self.module
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # process-wide; set here, not per timed call

        def call() -> Any:
            with torch.inference_mode():
                return module(*tensors)

        return call

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return flatten_outputs(self.bind(inputs)())


class OrtRunner(Runner):
    """ONNX Runtime on the CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int):
        ort = import_onnxruntime()
        check_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = _ORT_LOG["severity"]
        self.threads = threads
        self.path = Path(onnx_path)
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            if not _is_onnxruntime_error(e):
                raise
            raise _load_error(self.path, onnxruntime_message(e)) from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _feed(self, inputs: Sequence[np.ndarray]) -> dict:
        if len(inputs) != len(self.input_names):
            raise UsageError(f"the ONNX model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        return {n: np.ascontiguousarray(a) for n, a in zip(self.input_names, inputs)}

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        feed = self._feed(inputs)
        session = self.session
        return lambda: session.run(None, feed)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = self._feed(inputs)
        try:
            outputs = self.session.run(None, feed)
        except Exception as e:
            if not _is_onnxruntime_error(e):
                raise
            raise RuntimeError(onnxruntime_message(e)) from e  # callers add what was being run
        return [np.asarray(o) for o in outputs]


def _load_error(path: Path, message: str) -> ModelLoadError:
    """Why ONNX Runtime cannot make a session of `path`, for the user."""
    op = re.search(r"(\S+)\(-?\d+\) is not a registered function/op", message)
    if op:
        return ModelLoadError(f"{path} uses the operator {op.group(1)}, which ONNX Runtime does not implement",
                              "effkit runs models on ONNX Runtime's CPU provider: export with standard ONNX operators")
    return ModelLoadError(f"ONNX Runtime cannot load {path}: {message}",
                          "the file may be corrupt or need a newer onnxruntime; export it again")


def native_runner(model: Any, threads: int | None = None) -> Runner:
    """The runner of the model's own kind: torch for torch models, ONNX Runtime for ONNX ones.

    Without `threads`, torch keeps its current setting and ONNX Runtime uses all cores.
    """
    if model.kind == "torch":
        return TorchRunner(model.module, threads)
    return OrtRunner(model.onnx_path, threads or available_cores())


def flatten_outputs(out: Any) -> list[np.ndarray]:
    """Any torch output (tensor, tuple, list, dict, ModelOutput) as a flat list of float arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        t = out.detach()
        if t.is_quantized:
            t = t.dequantize()
        return [t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()]
    if isinstance(out, dict):
        return [a for v in out.values() for a in flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out for a in flatten_outputs(v)]
    if out is None:
        return []
    raise InputError(f"the model returned a {type(out).__name__}, which effkit cannot compare",
                     "return tensors, or a tuple/dict of tensors")
