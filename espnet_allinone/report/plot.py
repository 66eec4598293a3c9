"""WER against model size, with the Pareto front (matplotlib, Agg backend).

When the experiment has been searched (``<exp>/searched/search.json``, from
``python -m espnet_allinone.bin.search``), the searched picks with a test WER
join the plot as their own front, and a second panel beside it shows the
search's dev CER against exact bytes: the front of the uniform subsystems
and the front of everything the search scored. Without search.json the plot
is as it always was.
"""

from __future__ import annotations

import json
from pathlib import Path

from espnet_allinone.deploy.select import mark_selected
from espnet_allinone.report.results import Row, pareto_front
from espnet_allinone.search.experiment import SEARCH_FILE, SEARCHED_DIR


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

    search = read_search_summary(path.parent)
    if search is None:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    else:
        fig, (ax, dev_ax) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=120)
        draw_search(ax, dev_ax, search)
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


def read_search_summary(exp: Path) -> dict | None:
    """``<exp>/searched/search.json``, or None when the experiment was not searched."""
    path = Path(exp) / SEARCHED_DIR / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bytes, error) points no other point beats on both, smallest first."""
    return sorted(p for p in set(points) if not any(
        q[0] <= p[0] and q[1] <= p[1] and q != p for q in points))


def draw_search(ax, dev_ax, search: dict) -> None:
    """Searched picks with a test WER on ``ax``; the search's dev fronts on ``dev_ax``."""
    tested = [(c["disk_bytes"] / 1e6, c["wer"]) for c in search.get("chosen", [])
              if c.get("wer") is not None and c.get("disk_bytes")]
    if tested:
        xs, ys = zip(*_front(tested))
        ax.plot(xs, ys, "C1s-", zorder=3, label="searched (mixed records)")
    cands = search.get("candidates", [])
    every = [(c["bytes"] / 1e6, c["dev_error"]) for c in cands]
    uniform = [(c["bytes"] / 1e6, c["dev_error"]) for c in cands if c.get("uniform")]
    if every:
        dev_ax.scatter(*zip(*every), s=8, c="0.7", zorder=2, label="scored by the search")
    for points, style, label in ((uniform, "C0o--", "uniform subsystems' front"),
                                 (every, "C1s-", "searched front")):
        if points:
            dev_ax.plot(*zip(*_front(points)), style, zorder=3, label=label)
    for c in search.get("chosen", []):
        dev_ax.annotate(", ".join(c.get("budgets", [])), (c["bytes"] / 1e6, c["dev_error"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7)
    dev_ax.set_xlabel("exact bytes (MB)")
    dev_ax.set_ylabel(f"dev CER (%), {search.get('dev', {}).get('utterances', '?')} utterances")
    dev_ax.set_title("search on held-out data (greedy CTC)")
    dev_ax.grid(True, alpha=0.3)
    dev_ax.legend(fontsize=8)
