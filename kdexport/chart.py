"""Charts: the report's batch-1 latency per target (teacher vs student, with error bars) and
the placement plan's latency vs accuracy per device."""

from __future__ import annotations

from pathlib import Path

from kdexport.artifact import write_bytes
from kdexport.bundle.runner import point_label as batch_label


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


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher)."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plan_chart(plan: dict, path: Path) -> None:
    """Write a PNG per plan: one panel per device, p90 latency vs accuracy of each measured
    variant, the budget as a vertical line, the Pareto front as a step line, the choice ringed."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    devices = plan["devices"]
    fig, axes = plt.subplots(1, len(devices), figsize=(5 * len(devices), 4), squeeze=False)
    for ax, (name, d) in zip(axes[0], devices.items(), strict=True):
        variants = [v for v in [d["choice"], *d["rejected"]] if v and v["accuracy"] is not None]
        for v in variants:
            ax.scatter(v["p90_ms"], v["accuracy"], color="C0" if v["model"] == "student" else "C1")
            ax.annotate(f"{v['model'][0]}:{v['target']}", (v["p90_ms"], v["accuracy"]), fontsize=7)
        front = _pareto([(v["p90_ms"], v["accuracy"]) for v in variants])
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="grey", label="Pareto front")
        if d["choice"]:
            c = d["choice"]
            ax.scatter(c["p90_ms"], c["accuracy"], s=200, facecolors="none", edgecolors="green")
        ax.axvline(
            d["budget_ms"], color="red", linestyle="--", label=f"budget {d['budget_ms']:g} ms"
        )
        ax.set_xlabel(f"p90 latency, {batch_label(plan['batch'])} (ms)")
        ax.set_ylabel("test accuracy")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
