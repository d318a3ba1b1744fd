"""Generation speed of a GPT-2-small-shaped causal LM (124M parameters: `transformers.GPT2Config()` with
seeded random weights) under the compressions people apply to LLMs, side by side in one run.

Batch 1, a 128-token prompt (seeded random ids), 64 new tokens, 2 threads (run it alone on the machine).
Every row decodes greedily with a KV cache, one forward pass per new token:

  torch fp32 eager                 effkit.generation.greedy (transformers DynamicCache): the reference
  torch fp32 compiled              the same loop over torch.compile(model, dynamic=True) (inductor, default
                                   mode; dynamic shapes so the growing cache does not recompile each step)
  torch bf16                       the model cast to bf16 (only when the CPU has avx512_bf16 or amx_bf16)
  torch.ao dynamic int8            quantize_dynamic over every Linear, after GPT-2's Conv1D layers are turned
                                   into Linear (quantize_torchao.with_linears): attention, MLP and lm_head
  torchao int8/int4 weight-only    effkit's torchao wrappers (Int8WeightOnlyConfig per channel;
                                   IntxWeightOnlyConfig int4 in groups of 128), eager and compiled as above
  ORT fp32                         effkit.generation_ort.OrtGreedy over export_with_past (past key/values)
  ORT MatMulNBits int4/int8        RTN, group 128, on that file after onnx_preprocess (as quantize does);
                                   int4 with the embedding tables in 4 bits too (+emb: GatherBlockQuantized)
  effkit quantize auto             quantize(model, QuantizeConfig()) on the hf: folder, then its chosen model
                                   generates: OrtGreedy for an ONNX choice, greedy for a transformers module;
                                   a choice without past key/values prints n/a with the reason

Timing: each row first generates once untimed (compiling where it compiles; these tokens are also the ones
compared), then all rows generate once per round, round-robin, for several rounds, so that load drifting
during the run lands on every row alike. Reported per row, as medians across rounds: time to first token
(the prefill), decode ms per token (p50 within a round), decode tokens/s (1000 / that) and its ratio to torch
fp32 eager. "weights MB" is what the row holds: tensors in memory for torch rows (packed int8 weights
included), the ONNX file plus its external data for ORT rows; "x size" is that against torch fp32's.
"gen +MB" is the peak rise of the process's RSS during one generation above its RSS before it (KV cache,
activations, workspace); every row's weights stay resident in this one process, so its whole peak RSS is
printed once instead of a per-row peak.

Quality: with random weights perplexity is meaningless, so none is reported. Instead every row's logits are
compared with torch fp32 eager's over the prompt plus fp32's 64 greedy tokens, teacher-forced (each row is
fed the same tokens, so one early difference does not derail the rest; ORT rows through their KV cache, torch
rows in one eager pass, compiled rows through their eager module), by effkit's own measure
(effkit.fidelity.compare_outputs): "cosine" of the logits, "top1" the fraction of positions whose next token
matches fp32's. "greedy" counts the positions of the free-running 64-token continuation equal to fp32's: a
random model's top logits lie close together, so its greedy tokens flip at small errors and one flip changes
the rest of the continuation; shown, but no bar.

Goals (issue 15), printed at the end: weight-only int4 decode tokens/s >= 2.5x torch fp32 eager at a size
<= 0.3x; weight-only int8 >= 1.8x at <= 0.55x (the best row of each kind); effkit's auto choice at least as
fast as the fastest anchor that meets the same quality bar. The bar is the one effkit's auto choice is held
to, its default tolerance cosine >= 0.99 on the logits, measured as above. Anchors are issue 15's list:
every row but ORT MatMulNBits int8 and effkit's own.

    .venv/bin/python benchmarks/llm.py            # GPT-2 small shape (many minutes: compiles, quantize auto)
    .venv/bin/python benchmarks/llm.py --quick    # tiny model (vocab 512, 2 layers, 64 wide, groups of 32,
                                                  # prompt 16, 8 new tokens): checks that every row runs
"""

from __future__ import annotations

import argparse
import copy
import gc
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOALS = {"int4": (2.5, 0.3), "int8": (1.8, 0.55)}  # weight-only: (decode tokens/s x fp32 eager, size x fp32)


@dataclass
class Row:
    """One way to generate: its loop (ids, new_tokens) -> (tokens, prefill ms, decode ms list), or why n/a."""

    name: str
    goal: str | None = None  # "int4" or "int8": which weight-only goal the row counts for
    loop: Callable | None = None
    logits: Callable | None = None  # (prompt + fp32's continuation [1, L], prompt length) -> [L - start, vocab]
    fidelity: dict = field(default_factory=dict)  # effkit.fidelity.compare_outputs against fp32's logits
    anchor: bool = True  # one of issue 15's anchors, which effkit's auto choice is compared with
    weights: int | None = None
    reason: str | None = None
    compile_limit: float | None = None  # seconds the first (compiling) generation may take
    tokens: np.ndarray | None = None
    ttft: list = field(default_factory=list)
    p50: list = field(default_factory=list)
    rise: list = field(default_factory=list)

    def median(self, key: str) -> float:
        return float(np.median(getattr(self, key)))


def build(folder: Path, quick: bool) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = (transformers.GPT2Config(vocab_size=512, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=511, eos_token_id=511) if quick
              else transformers.GPT2Config())  # 124M: 12 layers, 768 wide, 12 heads, 50257 tokens
    transformers.utils.logging.disable_progress_bar()
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(str(folder))
    return folder


def torch_bytes(module) -> int:
    """Bytes of the module's tensors in memory: parameters and buffers (tied ones once), plus the packed
    weights and biases of torch.ao's quantized layers, which are no parameters."""
    import torch

    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    for m in module.modules():  # a quantized Linear (its weight a method), not the LinearPackedParams inside it
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):
            for t in (m.weight(), m.bias()):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def onnx_bytes(path: Path) -> int:
    """The ONNX file and its external data files."""
    from effkit.onnx_files import external_files

    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in external_files(path))


def status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


PEAK = {"bytes": 0}  # the whole process's peak RSS: PeakMemory resets VmHWM, so its readings are gathered here


class Compiled:
    """`module` under torch.compile, called as effkit.generation.greedy calls a transformers model."""

    def __init__(self, module):
        import torch

        self.config = module.config
        self.forward = module.forward  # greedy reads the cache argument's name from this signature
        # the rows share GPT-2's forward code, whose compiled graphs dynamo counts together: allow them all,
        # and fail (n/a) rather than fall back to eager silently when they are too many
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        self.compiled = torch.compile(module, dynamic=True)

    def __call__(self, **kwargs):
        return self.compiled(**kwargs)


def on_torch(module, compiled: bool = False) -> tuple[Callable, int, Callable]:
    """A torch row's (generation loop, weight bytes, teacher-forced logits): greedy over `module` (under
    torch.compile when `compiled`); the logits of every continuation position in one eager pass without cache."""
    import torch

    from effkit.generation import greedy

    def logits(full: np.ndarray, start: int) -> np.ndarray:
        with torch.inference_mode():
            out = module(input_ids=torch.from_numpy(full), use_cache=False, return_dict=True)
        return out.logits[0, start - 1:-1].float().numpy()

    runner = Compiled(module) if compiled else module
    return (lambda ids, n: greedy(runner, ids, n)), torch_bytes(module), logits


def on_ort(path: Path, threads: int) -> tuple[Callable, int, Callable]:
    """An ORT row's (OrtGreedy over `path`, file bytes, teacher-forced logits: the prompt, then each
    continuation token fed through the KV cache as in decoding). Raises UsageError for a file without
    past key/values."""
    from effkit.generation_ort import OrtGreedy

    loop = OrtGreedy(path, threads)

    def logits(full: np.ndarray, start: int) -> np.ndarray:
        out, past = loop.step(full[:, :start], loop.empty_past(1), start)
        rows = [out]
        for i in range(start, full.shape[1] - 1):
            out, past = loop.step(full[:, i:i + 1], past, i + 1)
            rows.append(out)
        return np.concatenate(rows).astype(np.float32)

    return loop, onnx_bytes(path), logits


@contextmanager
def time_limit(seconds: float | None):
    """Raise TimeoutError in this thread after `seconds` (SIGALRM), to stop a compilation that runs away."""
    if not seconds:
        yield
        return

    def stop(*_):
        raise TimeoutError(f"the first generation (compiling) took over {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def add(rows: list[Row], row: Row, make: Callable[[], tuple[Callable, int, Callable]]) -> None:
    """Append `row` with its loop, weight bytes and logits from `make()`, or n/a with the first line of its error."""
    from effkit.errors import first_line
    from effkit.util import quiet_torch

    start = time.perf_counter()
    try:
        with quiet_torch():
            row.loop, row.weights, row.logits = make()
    except Exception as e:
        row.reason = first_line(e, 160)
    print(f"  built {row.name} ({time.perf_counter() - start:.1f} s)" if row.reason is None
          else f"  {row.name}: n/a ({row.reason})", flush=True)
    rows.append(row)


def ort_quantized(source: Path, bits: int, group: int, threads: int) -> tuple[Callable, int, Callable]:
    from effkit.passes.quantize_ort import quantize_nbits

    return on_ort(quantize_nbits(source, bits=bits, group_size=group, algorithm="rtn", exclude=(),
                                 embeddings=bits == 4), threads)


def effkit_auto(model, ids: np.ndarray, threads: int, quick: bool) -> tuple[Row, str]:
    """effkit's `quantize` with the default config (method and backend auto) on the hf: model, timed on the
    prompt; a row generating with its choice, and a line saying what it chose."""
    from effkit.errors import UsageError, first_line
    from effkit.passes.quantize import DEFAULT_CANDIDATE_TIME, QuantizeConfig, quantize

    start = time.perf_counter()
    try:
        result = quantize(model.replace(example_inputs=(ids, np.ones_like(ids))), QuantizeConfig(), threads=threads,
                          candidate_time=0.1 if quick else DEFAULT_CANDIDATE_TIME)
    except Exception as e:
        return Row("effkit auto", anchor=False, reason=f"effkit quantize failed: {first_line(e, 160)}"), ""
    label, chosen = result.details["label"], result.model
    timed_on = result.details.get("timed_on")
    line = (f"effkit quantize auto chose {label} in {time.perf_counter() - start:.0f} s"
            + (f", timed on {timed_on}" if timed_on else ""))
    weight_only = result.details["method"] == "weight-only"
    row = Row(f"effkit auto = {label}"[:44], anchor=False, goal=("int4" if "int4" in label else "int8") if weight_only else None)
    if chosen.kind == "onnx":
        try:
            row.loop, row.weights, row.logits = on_ort(chosen.onnx_path, threads)
        except UsageError as e:
            why = first_line(e, 300).replace(str(chosen.onnx_path), "its file")
            row.reason = f"effkit's choice {label} cannot generate with a KV cache ({why})"
    elif hasattr(chosen.module, "config"):  # a transformers module: it takes the cache
        row.loop, row.weights, row.logits = on_torch(chosen.module)
    else:
        row.reason = (f"effkit's choice {label} cannot generate with a KV cache (a {type(chosen.module).__name__} "
                      "of one forward pass, without cache inputs)")
    return row, line


def generate(row: Row, ids: np.ndarray, new_tokens: int, timed: bool) -> None:
    """One generation of `row`; timed: its medians' samples, else (the first) its tokens, within its limit."""
    from effkit.benchmark import PeakMemory
    from effkit.errors import first_line

    PEAK["bytes"] = max(PEAK["bytes"], status_bytes("VmHWM"))
    before, start = status_bytes("VmRSS"), time.perf_counter()
    limit = None if timed else row.compile_limit
    try:
        with PeakMemory() as memory, time_limit(limit):
            tokens, prefill_ms, decode_ms = row.loop(ids, new_tokens)
    except Exception as e:  # dynamo may wrap the TimeoutError: say what happened in our own words
        PEAK["bytes"] = max(PEAK["bytes"], status_bytes("VmHWM"))
        late = limit and time.perf_counter() - start >= limit - 1
        row.loop = None
        row.reason = (f"the first generation (compiling) took over {limit:.0f} s" if late
                      else ("torch.compile: " if row.compile_limit else "") + first_line(e, 160))
        print(f"  {row.name}: n/a ({row.reason})", flush=True)
        return
    PEAK["bytes"] = max(PEAK["bytes"], memory.peak_bytes or 0)
    if timed:
        row.ttft.append(prefill_ms)
        row.p50.append(float(np.median(decode_ms)))
        row.rise.append(max(0, (memory.peak_bytes or before) - before))
    else:
        row.tokens = tokens


def goals(rows: list[Row], base_tps: float, base_size: int, bar: float) -> None:
    ran = [r for r in rows if r.loop is not None and r.p50]
    speed = {r.name: 1000.0 / r.median("p50") / base_tps for r in ran}
    size = {r.name: r.weights / base_size for r in ran}
    cos = {r.name: r.fidelity.get("cosine_min", float("nan")) for r in ran}
    print(f"\ngoals (decode tokens/s and size against torch fp32 eager; quality bar: cosine >= {bar} on the "
          "teacher-forced logits, effkit's default tolerance)")
    for goal, (x, s) in GOALS.items():
        group = sorted((r for r in ran if r.goal == goal), key=lambda r: -speed[r.name])
        if not group:
            print(f"  {goal} weight-only >= {x}x at <= {s}x: no row ran")
            continue
        met = [r for r in group if speed[r.name] >= x and size[r.name] <= s]
        best = (met or group)[0]
        missed = [w for w, ok in (("speed", speed[best.name] >= x), ("size", size[best.name] <= s)) if not ok]
        print(f"  {goal} weight-only >= {x}x at <= {s}x: {'MET' if met else 'MISSED (' + ', '.join(missed) + ')'}"
              f" by {best.name}: {speed[best.name]:.2f}x, size {size[best.name]:.2f}x, cosine {cos[best.name]:.4f}")
    auto = next(r for r in rows if r.name.startswith("effkit auto"))
    anchors = sorted((r for r in ran if r.anchor and cos[r.name] >= bar), key=lambda r: -speed[r.name])
    if auto not in ran or not anchors:
        print(f"  effkit auto >= the fastest anchor at the bar: n/a ({auto.reason or 'no anchor meets the bar'})")
        return
    a = anchors[0]
    verdict = "MET" if speed[auto.name] >= speed[a.name] else "MISSED"
    print(f"  effkit auto >= the fastest anchor at the bar: {verdict}: {auto.name} {speed[auto.name]:.2f}x "
          f"(cosine {cos[auto.name]:.4f}) against {a.name} {speed[a.name]:.2f}x (cosine {cos[a.name]:.4f})")


def fidelity(rows: list[Row], ids: np.ndarray) -> None:
    """Each row's logits against torch fp32's over the prompt and fp32's greedy continuation (teacher-forced,
    so one early difference does not derail the rest), by effkit's own measure (effkit.fidelity)."""
    from effkit.errors import first_line
    from effkit.fidelity import compare_outputs

    full = np.concatenate([ids, rows[0].tokens], axis=1)
    reference = rows[0].logits(full, ids.shape[1])
    for row in rows:
        if row.loop is not None:
            try:
                row.fidelity = compare_outputs([[reference[None]]], [[row.logits(full, ids.shape[1])[None]]])
            except Exception as e:
                print(f"  {row.name}: no fidelity ({first_line(e, 160)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens: checks that every row runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, --quick 2)")
    args = parser.parse_args()
    import torch

    from effkit.env import cpu_info
    from effkit.generation_ort import OrtGreedy, export_with_past
    from effkit.load import load_model
    from effkit.passes import quantize_torchao
    from effkit.passes.onnx_preprocess import preprocess
    from effkit.passes.quantize import DEFAULT_TOLERANCE
    from effkit.passes.quantize_bf16 import NO_BF16, cpu_has_bf16
    from effkit.util import import_torchao, quiet_torch

    import_torchao()  # quietly, before anything imports it loudly (its CUDA libraries, pytree warnings)

    torch.set_num_threads(args.threads)
    prompt_len, new_tokens = (16, 8) if args.quick else (128, 64)
    rounds = args.rounds or (2 if args.quick else 5)
    group = 32 if args.quick else 128  # the tiny model's layers are 64 wide: groups of 128 would not fit
    compile_limit = 120.0 if args.quick else 900.0
    with tempfile.TemporaryDirectory(prefix="effkit-llm-") as tmp:
        work = Path(tmp)
        with quiet_torch():  # saving imports torchao's prototypes, which warn about pytree registrations
            folder = build(work / "gpt2", args.quick)
        model = load_model(f"hf:{folder}")
        fp32 = model.module.inner
        ids = np.random.default_rng(0).integers(0, fp32.config.vocab_size, (1, prompt_len)).astype(np.int64)
        print(f"GPT-2 shape, {sum(p.numel() for p in fp32.parameters()) / 1e6:.1f}M parameters, prompt {prompt_len}, "
              f"{new_tokens} new tokens, batch 1, {args.threads} threads, {rounds} rounds; torch "
              f"{torch.__version__}, CPU {cpu_info()['model']}\nbuilding rows:", flush=True)
        auto, chose = effkit_auto(model, ids, args.threads, args.quick)  # first: its candidates peak in memory
        print(f"  {chose}" if chose else f"  effkit auto: n/a ({auto.reason})", flush=True)
        gc.collect()
        rows: list[Row] = []
        add(rows, Row("torch fp32 eager"), lambda: on_torch(fp32))
        add(rows, Row("torch fp32 compiled", compile_limit=compile_limit),
            lambda: on_torch(fp32, compiled=True))

        def bf16():
            if not cpu_has_bf16(cpu_info()["isa"]):
                raise RuntimeError(NO_BF16)
            return on_torch(copy.deepcopy(fp32).to(torch.bfloat16))

        add(rows, Row("torch bf16"), bf16)

        def ao_dynamic():
            module = torch.ao.quantization.quantize_dynamic(quantize_torchao.with_linears(fp32), {torch.nn.Linear},
                                                            dtype=torch.qint8)
            return on_torch(module)

        add(rows, Row("torch.ao dynamic int8"), ao_dynamic)
        for bits in (8, 4):
            scheme = f"int{bits}-weight"
            made: dict = {}

            def torchao(compiled: bool, scheme=scheme, made=made):
                if "module" not in made:
                    made["module"] = quantize_torchao.quantize(fp32, scheme, group_size=group, exclude=())
                return on_torch(made["module"], compiled)

            name = f"torchao int{bits} weight-only" + (f" g{group}" if bits == 4 else "")
            add(rows, Row(f"{name} eager", goal=f"int{bits}"), lambda f=torchao: f(False))
            add(rows, Row(f"{name} compiled", goal=f"int{bits}", compile_limit=compile_limit),
                lambda f=torchao: f(True))
        exported: dict = {}

        def ort_fp32():
            exported["path"] = export_with_past(fp32, work / "gpt2_past.onnx")
            return on_ort(exported["path"], args.threads)

        add(rows, Row("ORT fp32 (past key/values)"), ort_fp32)

        def ort_nbits(bits: int):
            if "path" not in exported:
                raise RuntimeError("no export with past key/values (see the ORT fp32 row)")
            if "ready" not in exported:
                exported["ready"] = preprocess(exported["path"])[0]
            return ort_quantized(exported["ready"], bits, group, args.threads)

        add(rows, Row(f"ORT MatMulNBits int4 RTN g{group} +emb", goal="int4"), lambda: ort_nbits(4))
        add(rows, Row(f"ORT MatMulNBits int8 RTN g{group}", goal="int8", anchor=False), lambda: ort_nbits(8))
        rows.append(auto)
        gc.collect()

        print("first (untimed) generation of each row:", flush=True)
        for row in rows:
            if row.loop is not None:
                start = time.perf_counter()
                generate(row, ids, new_tokens, timed=False)
                if row.loop is not None and row.compile_limit:
                    print(f"  {row.name}: first generation (compiling) {time.perf_counter() - start:.1f} s", flush=True)
        if rows[0].loop is None:
            sys.exit(f"torch fp32 eager cannot generate: {rows[0].reason}")
        fidelity(rows, ids)
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            for row in rows:
                if row.loop is not None:
                    generate(row, ids, new_tokens, timed=True)

        base, base_size = rows[0], rows[0].weights
        base_tps = 1000.0 / base.median("p50")
        print(f"\n{'row':44} {'TTFT ms':>8} {'ms/tok':>7} {'tok/s':>7} {'x fp32':>7} {'weights MB':>10} "
              f"{'x size':>6} {'cosine':>7} {'top1':>5} {'greedy':>6} {'gen +MB':>7}")
        for row in rows:
            if row.loop is None or not row.p50:
                print(f"{row.name:44} n/a: {row.reason}")
                continue
            tps = 1000.0 / row.median("p50")
            agree = int((row.tokens == base.tokens).sum())
            print(f"{row.name:44} {row.median('ttft'):8.1f} {row.median('p50'):7.2f} {tps:7.1f} "
                  f"{tps / base_tps:6.2f}x {row.weights / 1e6:10.1f} {row.weights / base_size:5.2f}x "
                  f"{row.fidelity.get('cosine_min', float('nan')):7.4f} "
                  f"{row.fidelity.get('token_agreement', float('nan')):5.2f} {agree:3d}/{new_tokens:<2d} "
                  f"{row.median('rise') / 1e6:7.1f}")
        print(f"(medians of {rounds} rounds; ms/tok: decode p50; cosine and top1: teacher-forced logits against "
              f"fp32's; greedy: equal tokens of the free-running continuation; whole-process peak RSS "
              f"{PEAK['bytes'] / 1e6:.0f} MB)")
        if chose:
            print(chose)
        goals(rows, base_tps, base_size, float(DEFAULT_TOLERANCE.split(">=")[1]))


if __name__ == "__main__":
    main()
