"""How long `effkit --help` takes against `python -c "import torch"`, measured side by side.

effkit keeps torch and onnxruntime out of its start-up path; this prints the ratio so a
regression (a heavy import at module level) shows up at once.

    python benchmarks/startup.py [--repeats 10]
"""

import argparse
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    commands = {
        "effkit --help": [sys.executable, "-m", "effkit", "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'pass'": [sys.executable, "-c", "pass"],
    }
    for cmd in commands.values():  # warm the file cache once
        timed(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):  # interleaved, so drift hits every command alike
        for name, cmd in commands.items():
            times[name].append(timed(cmd))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:28s} median {1000 * m:7.0f} ms over {args.repeats} runs")
    ratio = medians["effkit --help"] / medians["python -c 'import torch'"]
    print(f"effkit --help / import torch = {ratio:.2f}x")


if __name__ == "__main__":
    main()
