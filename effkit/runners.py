"""Runners: the one interface through which every benchmark and fidelity check runs a model.

A Runner's `run(inputs)` gives numpy outputs and its `bind(inputs)` a zero-argument call for
timing, with the inputs already converted, so a timing measures the model and not the conversion.
`native_runner(model)` runs a model on its own runtime; `effkit.export.make_runner` also runs a
torch model on ONNX Runtime, through its verified export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effkit.env import available_cores
from effkit.errors import InputError, UsageError
from effkit.limits import check_threads

RUNTIMES = ("torch", "onnxruntime")


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
        import onnxruntime as ort

        check_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.threads = threads
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
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
        return [np.asarray(o) for o in self.session.run(None, self._feed(inputs))]


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
