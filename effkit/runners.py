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
        self.cache = KvCache.of(self.session)
        # a causal LM with past key/values runs as a plain one (its past empty) unless asked for a decode step
        self.input_names = self.cache.plain_inputs if self.cache else [i.name for i in self.session.get_inputs()]
        self.output_names = self.cache.plain_outputs if self.cache else [o.name for o in self.session.get_outputs()]

    def _feed(self, inputs: Sequence[np.ndarray]) -> dict:
        if len(inputs) != len(self.input_names):
            raise UsageError(f"the ONNX model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        feed = {n: np.ascontiguousarray(a) for n, a in zip(self.input_names, inputs)}
        return self.cache.prefill_feed(feed) if self.cache else feed

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        feed = self._feed(inputs)
        session, names = self.session, self.output_names
        return lambda: session.run(names, feed)

    def bind_decode(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        """One decode step of a causal LM with past key/values, as a zero-argument call: the prompt `inputs`
        are run once (untimed) for their past, and each call then feeds one new token after that past,
        computing its logits and the grown past, as every step of generation does (the past is not kept, so
        every call costs the same)."""
        if not self.cache:
            raise UsageError(f"{self.path.name} has no past key/values, so it cannot be timed on a decode step",
                             "export the language model with its KV cache (effkit quantize does for hf: causal LMs)")
        prefill = self._feed(inputs)
        outputs = dict(zip(self.cache.outputs, self.session.run(self.cache.outputs, prefill)))
        feed = self.cache.step_feed(prefill, outputs)
        session = self.session
        return lambda: session.run(None, feed)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = self._feed(inputs)
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as e:
            if not _is_onnxruntime_error(e):
                raise
            raise RuntimeError(onnxruntime_message(e)) from e  # callers add what was being run
        return [np.asarray(o) for o in outputs]


_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")


def plain_input_names(names: Sequence[str]) -> list[str]:
    """The inputs a causal LM's ONNX file with past key/values (`KvCache`) takes when run as a plain model:
    all but the past and the positions; `names` as they are for any other file."""
    if "input_ids" not in names or not any(_PAST.match(n) for n in names):
        return list(names)
    return [n for n in names if not _PAST.match(n) and n != "position_ids"]


class KvCache:
    """The past key/values layout of a causal LM's ONNX file (`effkit.generation_ort`'s, Optimum's):
    `past_key_values.N.key`/`.value` inputs [batch, kv heads, past, head dim] and `present.N.*` outputs, with
    `input_ids`, `attention_mask` [batch, past + new] and optionally `position_ids`. `plain_inputs` and
    `plain_outputs` are what it takes and gives when run as a plain model: the past is empty and the
    positions count from 0 (as the torch model numbers them when not told)."""

    def __init__(self, inputs: dict, outputs: list[str]):
        self.past = {name: inputs[name] for name in inputs if _PAST.match(name)}
        self.present = {name: "present." + name.removeprefix("past_key_values.") for name in self.past}
        self.plain_inputs = plain_input_names(list(inputs))
        self.plain_outputs = [o for o in outputs if o not in self.present.values()]
        self.positions = "position_ids" in inputs
        self.outputs = outputs

    @classmethod
    def of(cls, session: Any) -> KvCache | None:
        """The layout of an ONNX Runtime session's model, or None when it has no past key/values."""
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if "input_ids" not in inputs or not any(_PAST.match(n) for n in inputs):
            return None
        cache = cls(inputs, outputs)
        return cache if set(cache.present.values()) <= set(outputs) else None

    def empty_past(self, batch: int) -> dict:
        """The past of a prefill: [batch, kv heads, 0, head dim] per input (heads and head size are in the file)."""
        dtypes = {"tensor(float16)": np.float16}
        return {name: np.zeros((batch, spec.shape[1], 0, spec.shape[3]), dtypes.get(spec.type, np.float32))
                for name, spec in self.past.items()}

    def feed(self, tokens: np.ndarray, past: dict, total: int) -> dict:
        """The feed of `tokens` [batch, n] after `past` (total = past length + n): a mask over past and tokens
        and their positions, where the file takes them."""
        batch, n = tokens.shape
        feed = {"input_ids": tokens, **past}
        if "attention_mask" in self.plain_inputs:
            feed["attention_mask"] = np.ones((batch, total), np.int64)
        if self.positions:
            feed["position_ids"] = np.ascontiguousarray(np.broadcast_to(np.arange(total - n, total), (batch, n)))
        return feed

    def prefill_feed(self, feed: dict) -> dict:
        """A plain feed (its own attention mask kept) completed with an empty past and positions 0.."""
        tokens = feed["input_ids"]
        return {**self.feed(tokens, self.empty_past(tokens.shape[0]), tokens.shape[1]), **feed}

    def step_feed(self, prefill: dict, outputs: dict) -> dict:
        """The feed of the decode step after `prefill`: its greedy next token after the past it left."""
        token = outputs[self.plain_outputs[0]][:, -1].argmax(-1)[:, None].astype(np.int64)
        past = {name: outputs[present] for name, present in self.present.items()}
        return self.feed(token, past, prefill["input_ids"].shape[1] + 1)


class DecodeStepRunner(Runner):
    """An ONNX Runtime runner of a causal LM with past key/values whose timed call is one decode step
    (`OrtRunner.bind_decode`): what generation spends its time on, token after token. The prompt is the
    inputs' first `prompt_len` tokens (the new token's position must be inside the model's context)."""

    name = "onnxruntime"

    def __init__(self, runner: OrtRunner, prompt_len: int):
        self.runner, self.threads, self.prompt_len = runner, runner.threads, prompt_len

    def bind(self, inputs: Sequence[np.ndarray]) -> Callable[[], Any]:
        return self.runner.bind_decode([a[:, :self.prompt_len] for a in inputs])

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.runner.run(inputs)


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
