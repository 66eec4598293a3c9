"""WER against model size, with the Pareto front (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from espnet_allinone.deploy.select import mark_selected
from espnet_allinone.report.results import Row, pareto_front


def label_without_overlap(ax, points: list[tuple[str, float, float]], fontsize: int = 7,
                          step: float = 3.0) -> list:
    """Annotate each point with its label; a label whose box would overlap one already
    placed moves up (then down) in ``step``-point steps until it is free."""
    ax.figure.canvas.draw()  # settles the axes limits: labels are placed in pixels
    renderer = ax.figure.canvas.get_renderer()
    placed, out = [], []
    for text, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        for k in range(200):
            dy = 4 + step * ((k + 1) // 2) * (1 if k % 2 else -1) if k else 4
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, dy),
                              fontsize=fontsize)
            box = ann.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            ann.remove()
        placed.append(box)
        out.append(ann)
    return out


def plot_wer_vs_size(rows: list[Row], path: Path, title: str = "") -> Path:
    """Write a PNG: every subsystem, its label, the front as a line; baselines if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    front = pareto_front(rows)
    front_names = {r.subsystem for r in front}
    xs = [r.bytes / 1e6 for r in rows]
    behind = [r for r in rows if r.subsystem not in front_names]
    ax.scatter([r.bytes / 1e6 for r in behind], [r.wer for r in behind], c="C0", zorder=3,
               label="all-in-one subsystem")
    ax.plot([r.bytes / 1e6 for r in front], [r.wer for r in front], "C3o--", zorder=3,
            label="on the Pareto front")
    base = [r for r in rows if r.baseline_wer is not None]
    if base:
        ax.scatter([r.bytes / 1e6 for r in base], [r.baseline_wer for r in base], marker="x",
                   c="C2", zorder=3, label="same subsystem trained alone")
    if len(rows) > 1 and max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    fig.tight_layout()
    label_without_overlap(ax, [(r.subsystem, x, r.wer) for r, x in zip(rows, xs)])
    ax.set_xlabel("bytes on disk (MB)")
    ax.set_ylabel("WER (%)")
    ax.set_title(title or "WER against model size")
    ax.grid(True, alpha=0.3)
    mark_selected(ax, path.parent)  # the subsystem `select` chose, if any
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
