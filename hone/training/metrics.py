"""Per-step metrics (JSONL, flushed every step so a crash loses nothing) and the loss chart (PNG + HTML)."""
from __future__ import annotations

import html
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from hone.io import atomic_write_text
from hone.layout import LOSS_CHART_HTML, LOSS_CHART_PNG


class MetricsWriter:
    """Append one JSON object per optimizer step to ``path``."""

    def __init__(self, path: str | Path, *, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the records of steps <= ``last_step`` (resuming redoes the later ones)."""
    path = Path(path)
    if path.is_file():
        kept = [m for m in read_metrics(path) if m["step"] <= last_step]
        atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def write_loss_charts(metrics: list[dict[str, Any]], out_dir: str | Path, title: str = "training loss") -> tuple[Path, Path]:
    """Draw ``loss_chart.png`` (matplotlib) and a self-contained ``loss_chart.html`` (inline SVG + table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    steps = [m["step"] for m in metrics]
    loss = [m["loss"] for m in metrics]
    lr = [m["lr"] for m in metrics]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, loss, color="#1f6feb", marker="o" if len(steps) < 40 else None, ms=3, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per loss token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, lr, color="#d29922", alpha=0.6, lw=1, label="learning rate")
    ax2.set_ylabel("learning rate")
    fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88))
    fig.tight_layout()
    png = out / LOSS_CHART_PNG
    tmp = out / f".{png.stem}.tmp{png.suffix}"
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
    page = out / LOSS_CHART_HTML
    atomic_write_text(page, _html(metrics, title))
    return png, page


def _html(metrics: list[dict[str, Any]], title: str) -> str:
    w, h, pad = 720, 320, 40
    steps = [m["step"] for m in metrics]
    loss = [m["loss"] for m in metrics]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(loss), max(loss)
    sx = lambda s: pad + (w - 2 * pad) * ((s - x0) / (x1 - x0) if x1 > x0 else 0.5)  # noqa: E731
    sy = lambda v: h - pad - (h - 2 * pad) * ((v - y0) / (y1 - y0) if y1 > y0 else 0.5)  # noqa: E731
    pts = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, loss))
    dots = "".join(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="2.5"><title>step {s}: loss {v:.4f}</title></circle>'
                   for s, v in zip(steps, loss))
    cols = ["step", "epoch", "loss", "lr", "grad_norm", "num_samples", "num_loss_tokens", "tokens_per_second"]
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols) + "</tr>" for m in metrics)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} svg{{background:#fafbfc;border:1px solid #ddd}}
polyline{{fill:none;stroke:#1f6feb;stroke-width:2}} circle{{fill:#1f6feb}} table{{border-collapse:collapse;margin-top:1em}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:right}} th{{background:#f0f3f6}}</style></head>
<body><h2>{html.escape(title)}</h2>
<p>{len(metrics)} steps; loss {loss[0]:.4f} &rarr; {loss[-1]:.4f} (min {min(loss):.4f})</p>
<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}">
<text x="{pad}" y="{pad - 10}" font-size="12">loss {y1:.4f}</text>
<text x="{pad}" y="{h - pad + 16}" font-size="12">min {y0:.4f} · steps {x0}&ndash;{x1}</text>
<polyline points="{pts}"/>{dots}</svg>
<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table></body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else html.escape(str(v))
