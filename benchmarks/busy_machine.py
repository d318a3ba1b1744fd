"""Before/after speedups on a machine that is busy for half of the measurement (issue 18).

For the reference models of quantize_vs_anchors.py (MLP 784-1024-1024-10, a ResNet-18-style CNN,
a BERT-base-like encoder; batch 1), each command's before/after measurement (the library's
`measure_before_after`, which quantize, prune and distill print, and whose `measure_paired` also
gives compress its speedups) runs four times: quiet; with one core loaded by another process
(a Python busy loop) for the first half of the pairs only; for the second half only; quiet again.

Printed per model, command and run: the p50 speedup with its 95% interval, pairs kept of those
measured (and why the others were measured again), and for the loaded runs whether it lies inside
the quiet run's interval, is marked inconclusive, or is OUTSIDE (a confident wrong figure: the goal
is none). A second quiet run ("quiet again") is the control: how far the same measurement lands
from the first quiet run's interval with no load at all. Run it on an otherwise idle machine: a
machine that others load already is neither "quiet" nor the controlled load the benchmark means.

    .venv/bin/python benchmarks/busy_machine.py            # full size, the commands' default --min-time 1 s
                                                           # (about 12 minutes; run it alone)
    .venv/bin/python benchmarks/busy_machine.py --quick    # smoke run: small shapes, short blocks
    .venv/bin/python benchmarks/busy_machine.py --models mlp --commands quantize
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quantize_vs_anchors import cases, quiet  # noqa: E402  (the same reference models)

# effkit's default on an idle 2-core machine: every core. The load then competes with the measurement
# itself, the case that inflated the speedup; --threads 1 leaves it a core of its own.
THREADS = 2
# "quiet again" is the control: how far a second quiet run lands from the first one's interval
SCENARIOS = ("quiet", "load first half", "load second half", "quiet again")


class CoreLoad:
    """A busy-loop process on one core, started and stopped from measure_paired's progress hook
    (called after every pair measured)."""

    def __init__(self, scenario: str, pairs: int):
        self.scenario, self.half, self.measured, self.process = scenario, pairs // 2, 0, None
        if scenario == "load first half":
            self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "print('started', flush=True)\nwhile True: pass"],
                                        stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # it runs

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def progress(self, label: str, fraction: float) -> None:
        self.measured += 1
        if self.measured == self.half:
            if self.scenario == "load first half":
                self.stop()
            elif self.scenario == "load second half":
                self.start()


def commands(model, quick: bool, threads: int, key: str) -> dict:
    """The changed model of each command: quantize (dynamic int8, ONNX Runtime), prune (half the channels;
    not the encoder, whose attention reshapes by a head count that channel pruning does not keep)."""
    from effkit.passes.prune import PruneConfig, prune
    from effkit.passes.quantize import QuantizeConfig, quantize

    q = quantize(model, QuantizeConfig(method="dynamic", backend="onnxruntime", allow_slower=True), threads=threads,
                 candidate_time=0.1 if quick else 0.5).model
    if key == "encoder":  # its attention reshapes by a head count that channel pruning does not keep
        return {"quantize": (q, "onnxruntime")}
    p = prune(model, PruneConfig(ratio=0.5), threads=threads).model
    return {"quantize": (q, "onnxruntime"), "prune": (p, "torch")}


def verdict(speedup: dict, quiet_run: dict) -> str:
    if speedup["verdict"] == "inconclusive":
        return "inconclusive (marked)"
    lo, hi = quiet_run["ci95"] or (None, None)
    if lo is None:
        return "quiet run inconclusive"
    return "inside the quiet interval" if lo <= speedup["estimate"] <= hi else "OUTSIDE the quiet interval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, short blocks")
    parser.add_argument("--models", default="mlp,cnn,encoder", help="comma-separated: mlp, cnn, encoder")
    parser.add_argument("--commands", default="quantize,prune", help="comma-separated: quantize, prune")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"threads of the measurement (default {THREADS})")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from effkit.env import cpu_info
    from effkit.model import Model
    from effkit.outcome import PAIRS, measure_before_after
    from effkit.util import quiet_torch
    from effkit.util import fmt_speedup

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    wanted = {c.strip() for c in args.commands.split(",") if c.strip()}
    cpu = cpu_info()
    print(f"# effkit before/after on a half-busy machine{' (quick)' if args.quick else ''}: {cpu['model']}, "
          f"{os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    wrong = 0
    seen = set()
    for case in cases(args.quick, names):
        if case["name"] == "mlp b64" or case["key"] in seen:  # batch 1 per reference model
            continue
        seen.add(case["key"])
        module = case["build"]().eval()
        example = (torch.randn(*case["shape"]).numpy(),)
        model = Model(kind="torch", module=copy.deepcopy(module), example_inputs=example, input_names=["x"],
                      source=case["name"], format="factory")
        with quiet(), quiet_torch():
            changed = commands(model, args.quick, args.threads, case["key"])
        for command, (after, runtime) in changed.items():
            if command not in wanted:
                continue
            quiet_run = None
            for scenario in SCENARIOS:
                load = CoreLoad(scenario, PAIRS)
                try:
                    with quiet_torch():
                        outcome = measure_before_after(command, model, after, runtimes=[runtime], threads=args.threads,
                                                       warmup=3 if args.quick else 10,
                                                       min_time=0.3 if args.quick else 1.0, progress=load.progress)
                finally:
                    load.stop()
                speedup = outcome.comparison(runtime)
                quiet_run = quiet_run or speedup
                mark = "" if scenario == "quiet" else verdict(speedup, quiet_run)
                mark = f"control: {mark}" if scenario == "quiet again" else mark
                wrong += mark.startswith("OUTSIDE") and scenario != "quiet again"
                print(f"  {case['name']:<12} {command:<9} {runtime:<12} {scenario:<17} {fmt_speedup(speedup):<32} "
                      f"{speedup['pairs']:>2}/{speedup['attempts']:<2} pairs kept {speedup['discarded']} {mark}", flush=True)
    print(f"goal: every loaded run inside the quiet interval or marked inconclusive -> "
          f"{'met' if not wrong else f'NOT met ({wrong} confident wrong figure(s))'}")


if __name__ == "__main__":
    main()
