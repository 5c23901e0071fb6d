"""Per-step metrics (JSONL, flushed every step so a crash loses nothing) and the loss chart (PNG + HTML)."""
from __future__ import annotations

import html
import json
import math
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


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _tick_label(v: float, step: float) -> str:
    if step >= 1 and float(v).is_integer():
        return f"{int(v)}"
    digits = max(0, -math.floor(math.log10(step)) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0))
    return f"{v:.{min(digits, 8)}f}"


def _html(metrics: list[dict[str, Any]], title: str) -> str:
    """The page: an inline SVG chart (axes with ticks and labels; step and loss under the pointer, by a few lines
    of inline script, and in each point's tooltip) and the table of every step. Nothing is loaded from elsewhere."""
    w, h = 760, 360
    left, right, top, bottom = 70, 20, 20, 50
    points = [(m["step"], float(m["loss"])) for m in metrics
              if isinstance(m.get("loss"), (int, float)) and math.isfinite(m["loss"])]
    loss = [v for _, v in points] or [float("nan")]
    steps = [s for s, _ in points] or [0]
    x0, x1 = min(steps), max(steps)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(loss), max(loss)
    if not (math.isfinite(y0) and math.isfinite(y1)):
        y0, y1 = 0.0, 1.0
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1.0), y1 + (abs(y1) * 0.05 or 1.0)
    margin = (y1 - y0) * 0.05
    y0, y1 = y0 - margin, y1 + margin
    pw, ph = w - left - right, h - top - bottom
    sx = lambda s: left + pw * (s - x0) / (x1 - x0)  # noqa: E731
    sy = lambda v: top + ph - ph * (v - y0) / (y1 - y0)  # noqa: E731
    xt = [t for t in nice_ticks(x0, x1, 8, integer=True) if x0 <= t <= x1]
    yt = [t for t in nice_ticks(y0, y1, 6) if y0 <= t <= y1]
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    axes = [f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>',
            f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>']
    for t in xt:
        x = sx(t)
        axes.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}"/>'
                    f'<line class="axis" x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 5}"/>'
                    f'<text class="tick" x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{_tick_label(t, 1)}</text>')
    for t in yt:
        y = sy(t)
        axes.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}"/>'
                    f'<line class="axis" x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}"/>'
                    f'<text class="tick" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(t, ystep)}</text>')
    axes.append(f'<text class="label" x="{left + pw / 2:.1f}" y="{h - 8}" text-anchor="middle">optimizer step</text>')
    axes.append(f'<text class="label" transform="translate(16 {top + ph / 2:.1f}) rotate(-90)" '
                f'text-anchor="middle">loss (per loss token)</text>')
    pts = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points)
    dots = "".join(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="2.5"><title>step {s}: loss {v:.4f}</title></circle>'
                   for s, v in points)
    data = json.dumps([[s, round(v, 6), round(sx(s), 1), round(sy(v), 1)] for s, v in points])
    cols = ["step", "epoch", "loss", "lr", "grad_norm", "num_samples", "num_loss_tokens", "tokens_per_second"]
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols) + "</tr>" for m in metrics)
    summary = (f"{len(metrics)} steps; loss {loss[0]:.4f} &rarr; {loss[-1]:.4f} (min {min(loss):.4f})"
               if points else f"{len(metrics)} steps; no finite loss recorded")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}} svg{{background:#fafbfc;border:1px solid #ddd}}
polyline{{fill:none;stroke:#1f6feb;stroke-width:2}} circle{{fill:#1f6feb}} table{{border-collapse:collapse;margin-top:1em}}
.axis{{stroke:#444;stroke-width:1}} .grid{{stroke:#e3e6ea;stroke-width:1}} .tick{{font-size:11px;fill:#444}}
.label{{font-size:12px;fill:#222}} #hover{{pointer-events:none}} #hover text{{font-size:12px;fill:#111}}
#hover rect{{fill:#fff;stroke:#bbb}} #hover circle{{fill:#d1242f}} #hover line{{stroke:#999;stroke-dasharray:3 3}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:right}} th{{background:#f0f3f6}}</style></head>
<body><h2>{html.escape(title)}</h2>
<p>{summary}</p>
<svg id="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="loss by optimizer step">
{''.join(axes)}
<polyline points="{pts}"/>{dots}
<g id="hover" visibility="hidden"><line id="hx" y1="{top}" y2="{top + ph}"/><circle id="hc" r="4"/>
<rect id="hr" width="150" height="22" rx="3"/><text id="ht"></text></g>
<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="transparent" id="area"/></svg>
<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{rows}</table>
<script>
(function () {{
  var pts = {data}, svg = document.getElementById("chart"), g = document.getElementById("hover");
  var hx = document.getElementById("hx"), hc = document.getElementById("hc");
  var hr = document.getElementById("hr"), ht = document.getElementById("ht");
  if (!pts.length) return;
  document.getElementById("area").addEventListener("mousemove", function (e) {{
    var box = svg.getBoundingClientRect(), x = (e.clientX - box.left) * {w} / box.width, best = pts[0];
    for (var i = 1; i < pts.length; i++) if (Math.abs(pts[i][2] - x) < Math.abs(best[2] - x)) best = pts[i];
    hx.setAttribute("x1", best[2]); hx.setAttribute("x2", best[2]);
    hc.setAttribute("cx", best[2]); hc.setAttribute("cy", best[3]);
    var tx = Math.min(best[2] + 8, {left + pw - 150}), ty = Math.max(best[3] - 28, {top});
    hr.setAttribute("x", tx); hr.setAttribute("y", ty);
    ht.setAttribute("x", tx + 6); ht.setAttribute("y", ty + 15);
    ht.textContent = "step " + best[0] + "  loss " + best[1].toFixed(4);
    g.setAttribute("visibility", "visible");
  }});
  document.getElementById("area").addEventListener("mouseleave", function () {{
    g.setAttribute("visibility", "hidden");
  }});
}})();
</script></body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else html.escape(str(v))
