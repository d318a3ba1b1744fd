"""How strict and how quiet is `effkit compare` at its default settings, on this machine?

Compares an MLP with a second copy of itself (A/A) and with copies made 10% and 25% slower by a
real change in the computation (more layers of the same width), N times each, with a busy-loop
process loading one core during every other run. Prints the false-alarm rate on A/A, the
detection rate of each slowdown, the slowdown actually measured, and how long each compare took.

    .venv/bin/python benchmarks/gate_noise.py           # 20 runs per case (60 compares, ~6 min)
    .venv/bin/python benchmarks/gate_noise.py --quick   # 2 runs per case, a smoke test

Run it alone on the machine: other work changes the load between blocks, and compare measures
pairs again (or says inconclusive) when that happens.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
WIDTH, BATCH, BASE_LAYERS = 256, 16, 20
# 22 and 25 layers: +10% and +25% of the matmul work (the per-layer overhead scales alike)
CASES = {"A/A": BASE_LAYERS, "10% slower": 22, "25% slower": 25}


def _mlp(layers: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*blocks).eval(), torch.randn(BATCH, WIDTH)


def base():
    """The reference: 20 Linear(256, 256) + ReLU layers, batch 16."""
    return _mlp(BASE_LAYERS)


def slower_10():
    return _mlp(CASES["10% slower"])


def slower_25():
    return _mlp(CASES["25% slower"])


def busy_loop(seconds: float) -> subprocess.Popen:
    """Another process that keeps one core busy for at most `seconds`."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per case with fewer pairs (smoke test)")
    parser.add_argument("--runs", type=int, default=20, help="compares per case")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs

    from effkit.comparison import DEFAULT_THRESHOLD, compare
    from effkit.env import CpuMonitor
    from effkit.load import load_model
    from effkit.env import available_cores

    with CpuMonitor(available_cores()) as background:
        time.sleep(1.0)
    print(f"before starting, other processes used {background.result.get('other_cpu_cores', float('nan')):.2f} of "
          f"{available_cores()} cores (the figures below assume they were otherwise idle)")

    settings = {"pairs": 6} if args.quick else {}
    reference = load_model(f"{HERE}:base")
    candidates = {"A/A": load_model(f"{HERE}:base"),  # a second copy, as CI loads main's and the PR's files
                  "10% slower": load_model(f"{HERE}:slower_10"), "25% slower": load_model(f"{HERE}:slower_25")}
    print(f"MLP {BASE_LAYERS}x Linear({WIDTH},{WIDTH}), batch {BATCH}, torch eager; default threshold "
          f"{100 * DEFAULT_THRESHOLD:g}%; {runs} compares per case, a busy core during every other one"
          + (" (quick: 6 pairs)" if args.quick else ""))
    rows = []
    for case, candidate in candidates.items():
        for i in range(runs):
            loaded = i % 2 == 1
            hog = busy_loop(120) if loaded else None
            try:
                if hog:
                    time.sleep(0.2)  # let it start
                result = compare(reference, candidate, seed=i, **settings)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
            p50 = result.stats.get("p50", {})
            rows.append({"case": case, "loaded": loaded, "verdict": result.verdict, "ratio": p50.get("ratio"),
                         "ci": p50.get("ci"), "threads": result.threads, "kept": len(result.pairs),
                         "attempts": result.attempts, "seconds": result.duration_s})
            r = rows[-1]
            ci = f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r["ci"] else "-"
            ratio = f"{r['ratio']:.3f}" if r["ratio"] else "-"
            print(f"  {case:<11} run {i + 1:>2} {'busy core' if loaded else 'quiet    '}  p50 B/A {ratio} {ci:<16} "
                  f"{r['verdict']:<12} {r['threads']} threads, {r['kept']}/{r['attempts']} pairs, {r['seconds']:.1f} s",
                  flush=True)

    print("\nsummary")
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        counts = {v: sum(r["verdict"] == v for r in mine) for v in ("slower", "faster", "same", "inconclusive")}
        quiet = [r["ratio"] for r in mine if not r["loaded"] and r["ratio"]]
        measured = f"measured p50 B/A {statistics.median(quiet):.3f} (median of quiet runs)" if quiet else ""
        seconds = [r["seconds"] for r in mine]
        if case == "A/A":
            alarms = counts["slower"] + counts["faster"]
            what = f"false alarms {alarms}/{len(mine)}"
        else:
            what = f"detected {counts['slower']}/{len(mine)}"
        by_load = ", ".join(f"{label}: {sum(r['verdict'] == 'slower' for r in mine if r['loaded'] == flag)}/"
                            f"{sum(r['loaded'] == flag for r in mine)} slower"
                            for label, flag in (("quiet", False), ("busy core", True)))
        print(f"  {case:<11} {what:<20} ({counts['same']} same, {counts['inconclusive']} inconclusive, "
              f"{counts['faster']} faster; {by_load}); {measured}; "
              f"compare took {statistics.mean(seconds):.1f} s mean, {max(seconds):.1f} s max")


if __name__ == "__main__":
    main()
