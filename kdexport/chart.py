"""The report's chart: batch-1 latency per target, teacher vs student, with error bars."""

from __future__ import annotations

from pathlib import Path

from kdexport.artifact import write_bytes


def chart(figs: dict, path: Path) -> None:
    """Write a PNG bar chart: p50 per target and model; bars from p50 to p90 as error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    targets = [
        t
        for t, e in figs["targets"].items()
        if any("p50_ms" in e[m] for m in ("teacher", "student"))
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(targets)), 4))
    width = 0.38
    for i, model in enumerate(("teacher", "student")):
        p50 = [figs["targets"][t][model].get("p50_ms", 0) for t in targets]
        p90 = [figs["targets"][t][model].get("p90_ms", 0) for t in targets]
        xs = [j + (i - 0.5) * width for j in range(len(targets))]
        ax.bar(
            xs,
            p50,
            width,
            label=model,
            yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]],
            capsize=3,
        )
    ax.set_xticks(range(len(targets)), targets, rotation=20, ha="right")
    ax.set_ylabel("latency, batch 1 (ms): p50, bar to p90")
    ax.set_title("Teacher vs student per target")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
