"""Charts: the report's batch-1 latency per target (teacher vs student, with error bars), the
requests each serves at a p99 bound (serve-bench), and the placement plan's latency vs accuracy
per device."""

from __future__ import annotations

from pathlib import Path

from kdexport.artifact import write_bytes
from kdexport.bundle.runner import point_label as batch_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int) -> None:
    """The figure as a PNG at ``path`` (written atomically, without a timestamp)."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _numbered(ax, points: list[tuple[float, float, str]]) -> None:
    """Each point a numbered marker keyed in a legend beside the axes: labels never overlap."""
    for i, (x, y, label) in enumerate(points):
        ax.scatter(x, y, marker=f"${i}$", s=90, color=f"C{i % 10}", label=f"{i}: {label}")


def chart(figs: dict, path: Path) -> None:
    """Write a PNG bar chart: p50 per target and model; bars from p50 to p90 as error bars."""
    plt = _pyplot()
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
    _save(plt, fig, path, 110)


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
    plt = _pyplot()
    devices = plan["devices"]
    fig, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 4.5), squeeze=False)
    for ax, (name, d) in zip(axes[0], devices.items(), strict=True):
        goal = d.get("capacity")
        x = "qps_at_p99" if goal else "p90_ms"  # a capacity goal: requests a server serves
        variants = [v for v in [d["choice"], *d["rejected"]] if v and v["accuracy"] is not None]
        variants.sort(key=lambda v: (v[x], -v["accuracy"]))
        _numbered(ax, [(v[x], v["accuracy"],
                        f"{v.get('member') or v['model']} on {v['target']}") for v in variants])  # fmt: skip
        front = _pareto([(v[x], v["accuracy"]) for v in variants] if not goal else [])
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="grey", label="Pareto front")
        if d["choice"]:
            c = d["choice"]
            ax.scatter(c[x], c["accuracy"], s=200, facecolors="none", edgecolors="green")
        if goal:
            per = goal["qps"] / goal["max_servers"]
            ax.axvline(per, color="red", linestyle="--", label=f"goal {per:,.0f} req/s a server")
            ax.set_xlabel(f"req/s a server at p99 <= {goal['p99_ms']:g} ms")
        else:
            ax.axvline(
                d["budget_ms"], color="red", linestyle="--", label=f"budget {d['budget_ms']:g} ms"
            )
            ax.set_xlabel(f"p90 latency, {batch_label(plan['batch'])} (ms)")
        ax.set_ylabel("test accuracy")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(plt, fig, path, 100)


def prune_trace_chart(trace: list[dict], budget_ms: float, target: str, point: str, path: Path):
    """Write a PNG of a budget search's steps: p50 and p90 on ``target`` at ``point`` against
    the step, the budget as a line; the MACs kept and the validation accuracy beside it."""
    plt = _pyplot()
    steps = [r["step"] for r in trace]
    fig, (lat, kept) = plt.subplots(1, 2, figsize=(10, 4))
    lat.plot(steps, [r["p50_ms"] for r in trace], "o-", label="p50")
    lat.plot(steps, [r["p90_ms"] for r in trace], "s-", label="p90")
    lat.axhline(budget_ms, color="red", linestyle="--", label=f"budget {budget_ms:g} ms")
    lat.set_xlabel("step (0: the teacher)")
    lat.set_ylabel(f"latency on {target}, {batch_label(point)} (ms)")
    lat.legend(fontsize=8)
    macs = [r["macs"] / trace[0]["macs"] for r in trace]
    kept.plot(steps, macs, "o-", color="C2", label="MACs kept")
    acc = [(s, r["val_accuracy"]) for s, r in zip(steps, trace, strict=True) if r["val_accuracy"]]
    if acc:
        kept.plot(*zip(*acc, strict=True), "s-", color="C3", label="validation accuracy")
    kept.set_xlabel("step (0: the teacher)")
    kept.set_ylim(0, 1.05)
    kept.legend(fontsize=8)
    fig.suptitle("Cut to a latency budget: each step cut, recovered with KD, timed")
    _save(plt, fig, path, 100)


def family_chart(points: dict[str, list[dict]], point: str, path: Path) -> None:
    """Write a PNG of a family of students: one panel per target, accuracy against p50 at
    ``point``; each model a numbered marker keyed in the legend (no labels over each other),
    the Pareto front as a step line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(8 * len(points), 4.2), squeeze=False)
    for ax, (target, pts) in zip(axes[0], points.items(), strict=True):
        _numbered(ax, [(p["p50_ms"], p["accuracy"], p["name"]) for p in pts])
        front = _pareto([(p["p50_ms"], p["accuracy"]) for p in pts])
        ax.step(*zip(*front, strict=True), where="post", color="grey", alpha=0.6,
                label="Pareto front")  # fmt: skip
        ax.set_xlabel(f"p50 latency, {batch_label(point)} (ms)")
        ax.set_ylabel("test accuracy")
        ax.set_title(target)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(plt, fig, path, 100)


def capacity_chart(checks: dict, path: Path) -> None:
    """Write a PNG bar chart: requests per second each model serves at the p99 bound (LoadGen's
    Server scenario), per target; Offline throughput as a marker above each bar."""
    plt = _pyplot()
    targets = [
        t for t, e in checks["targets"].items() if any(m in e for m in ("teacher", "student"))
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(targets)), 4))
    width = 0.38
    for i, model in enumerate(("teacher", "student")):
        xs = [j + (i - 0.5) * width for j in range(len(targets))]
        served = [checks["targets"][t].get(model, {}) for t in targets]
        ax.bar(xs, [m.get("qps_at_p99", 0) for m in served], width, label=f"{model}: at p99")
        offline = [(x, m["offline_sps"]) for x, m in zip(xs, served, strict=True) if m]
        ax.scatter([x for x, _ in offline], [y for _, y in offline], marker="_", s=200,
                   color=f"C{i}", label=f"{model}: Offline")  # fmt: skip
    ax.set_xticks(range(len(targets)), targets, rotation=20, ha="right")
    ax.set_ylabel(f"requests per second at p99 <= {checks['p99_ms']:g} ms")
    ax.set_title(f"Capacity per target ({checks['cores']} cores, LoadGen Server and Offline)")
    ax.legend()
    _save(plt, fig, path, 110)
