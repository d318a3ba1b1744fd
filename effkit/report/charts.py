"""Charts of a compress result, drawn with matplotlib (the optional extra `effkit[report]`) as PNG bytes.

matplotlib is imported inside `compress_charts`, with the Agg backend (no display needed); without
it `compress_charts` returns None and the HTML report keeps its tables.
"""

from __future__ import annotations

import io
from typing import Any

INSTALL_HINT = "pip install 'effkit[report]'"
# One colour per runtime, the same in every chart.
RUNTIME_COLORS = {"torch": "#d62728", "onnxruntime": "#1f77b4"}


def compress_charts(result) -> list[dict[str, Any]] | None:
    """The report's charts as [{"name", "title", "caption", "png"}], or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    charts = []
    timed = [s for s in result.states if s.bench is not None]
    with plt.rc_context({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}):
        if timed:
            charts.append(_chart(plt, "latency", "Latency distributions, before and after",
                                 "Every timed call of the original and the final model (ms, log scale), "
                                 "per runtime; boxes span the middle half, whiskers the 5th-95th percentiles.",
                                 lambda ax: _latency_distributions(ax, timed[0], timed[-1]), size=(7, 3.6)))
            charts.append(_chart(plt, "steps", "Size and latency per step",
                                 "Bytes on disk and p50 latency of the model after each step, per runtime.",
                                 lambda fig: _size_and_latency(fig, timed), size=(8, 3.2), whole_figure=True))
            charts.append(_chart(plt, "tradeoff", "Accuracy against latency",
                                 "Each step's model: p50 latency on each runtime against accuracy on the "
                                 "evaluation data (or cosine similarity to the original's outputs).",
                                 lambda ax: _tradeoff(ax, timed), size=(6, 3.6)))
        layers = result.layers()
        if layers:
            charts.append(_chart(plt, "layers", "Per layer: weights kept, and layers kept in float",
                                 "Share of each layer's weights left non-zero after the last torch step "
                                 "(structured pruning removes rows, unstructured zeroes entries); layers the "
                                 "quantizer kept in float are hatched.",
                                 lambda ax: _layers(ax, layers), size=(7, 0.8 + 0.28 * len(layers))))
    return charts


def _chart(plt, name: str, title: str, caption: str, draw, size: tuple[float, float],
           whole_figure: bool = False) -> dict:
    fig = plt.figure(figsize=size, dpi=110)
    try:
        if whole_figure:
            draw(fig)
        else:
            draw(fig.add_subplot(1, 1, 1))
        fig.tight_layout()
        buffer = io.BytesIO()
        # no Software metadata: the file should carry no address of any kind
        fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return {"name": name, "title": title, "caption": caption, "png": buffer.getvalue()}


def _latency_distributions(ax, first, last) -> None:
    import numpy as np

    data, labels, colors = [], [], []
    for state in (first, last):
        for run in state.bench.runs:
            data.append(run["samples_ms"])
            labels.append(f"{state.name}\n{run['runtime']}")
            colors.append(RUNTIME_COLORS.get(run["runtime"], "#7f7f7f"))
    box = ax.boxplot(data, whis=(5, 95), showfliers=False, patch_artist=True)
    for patch, color in zip(box["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.45)
    for i, samples in enumerate(data, 1):  # every sample, jittered, so the shape of the distribution shows
        jitter = np.random.default_rng(i).uniform(-0.18, 0.18, len(samples))
        ax.scatter(i + jitter, samples, s=4, color=colors[i - 1], alpha=0.35, linewidths=0)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log scale)")


def _size_and_latency(fig, states) -> None:
    names = [s.name for s in states]
    ax_size, ax_lat = fig.subplots(1, 2)
    sizes = [(s.bench.size.get("bytes_on_disk") or 0) / 1e6 for s in states]
    ax_size.bar(names, sizes, color="#7f7f7f")
    ax_size.set_ylabel("size on disk (MB)")
    for i, v in enumerate(sizes):
        ax_size.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
    runtimes = [r for r in RUNTIME_COLORS if any(_p50(s, r) is not None for s in states)]
    width = 0.8 / max(1, len(runtimes))
    for j, runtime in enumerate(runtimes):
        xs = [i + (j - (len(runtimes) - 1) / 2) * width for i in range(len(states))]
        values = [_p50(s, runtime) for s in states]
        ax_lat.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                   width=width, label=runtime, color=RUNTIME_COLORS[runtime])
    ax_lat.set_xticks(range(len(states)), names)
    ax_lat.set_ylabel("p50 latency (ms)")
    ax_lat.legend(frameon=False)
    for ax in (ax_size, ax_lat):
        ax.tick_params(axis="x", labelrotation=20)


def _p50(state, runtime: str) -> float | None:
    run = next((r for r in state.bench.runs if r["runtime"] == runtime), None)
    return run["latency_ms"]["p50"] if run else None


def _tradeoff(ax, states) -> None:
    use_accuracy = all(s.accuracy is not None for s in states)
    for runtime, color in RUNTIME_COLORS.items():
        points = [(s, _p50(s, runtime)) for s in states if _p50(s, runtime) is not None]
        if not points:
            continue
        xs = [p for _, p in points]
        ys = [100 * s.accuracy if use_accuracy else (1.0 if s.fidelity is None else s.fidelity["cosine_min"])
              for s, _ in points]
        ax.plot(xs, ys, "-o", color=color, label=runtime, alpha=0.8)
        for i, ((s, _), x, y) in enumerate(zip(points, xs, ys)):  # staggered: steps that change little overlap
            ax.annotate(s.name, (x, y), textcoords="offset points", xytext=(4, 4 - 11 * (i % 2)), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel("accuracy (%)" if use_accuracy else "cosine similarity to the original (min)")
    ax.legend(frameon=False)


def _layers(ax, layers: list[dict]) -> None:
    names = [layer["name"] for layer in layers][::-1]
    kept = [layer["kept"] for layer in layers][::-1]
    floats = [layer.get("float") for layer in layers][::-1]
    bars = ax.barh(names, [100 * k for k in kept], color="#2ca02c", alpha=0.7)
    for bar, is_float in zip(bars, floats):
        if is_float:
            bar.set_hatch("///")
            bar.set_edgecolor("#333333")
    ax.set_xlim(0, 105)
    ax.set_xlabel("weights kept (% of the original layer's, non-zero)")
