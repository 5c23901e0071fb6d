"""``plot_loss``: Training Hub's loss plot over one or several runs' training_metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from hone.errors import HoneError
from hone.layout import METRICS_FILE, TrainingLayout

# Training Hub's order of loss keys in a metrics record (hone writes "loss")
DEFAULT_METRIC_KEYS = ["avg_loss", "loss", "avg_loss_backwards", "train_loss"]
METRICS_FILES = (METRICS_FILE, "training_log.jsonl", "metrics.jsonl")
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan"]


def _metrics_file(run: Path, metrics_file: str | None) -> Path:
    names = (metrics_file,) if metrics_file else METRICS_FILES
    for name in names:
        if (run / name).is_file():
            return run / name
    raise HoneError(f"no metrics file in {run} (looked for {', '.join(names)})", where="ckpt_output_dirs",
                    fix="pass the ckpt_output_dir of a hone run (it holds training_metrics.jsonl), or metrics_file")


def read_losses(path: Path, metric_keys: list[str] | None = None) -> tuple[list[int], list[float], str | None]:
    """(steps, losses, key used) of the records holding one of ``metric_keys`` (the first found per record)."""
    steps, losses, used = [], [], None
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = next((k for k in metric_keys or DEFAULT_METRIC_KEYS if k in rec), None)
        if key is not None:
            steps.append(int(rec.get("step", i + 1)))
            losses.append(float(rec[key]))
            used = used or key
    return steps, losses, used


def _ema(values: list[float], span: int) -> list[float]:
    alpha, out = 2.0 / (span + 1), []
    for v in values:
        out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
    return out


def plot_loss(ckpt_output_dirs: str | list[str], *, metrics_file: str | None = None,
              output_path: str | None = None, labels: list[str] | None = None, ema: bool = False,
              ema_span: int = 30, metric_keys: list[str] | None = None, show: bool = False) -> str:
    """Draw the loss of each run against the optimizer step into a PNG and return its path.

    Training Hub's signature: ``output_path`` defaults to ``loss_plot.png`` in the first run's directory,
    ``labels`` to the directories' names (paths may be ``pathlib.Path`` too), ``ema`` overlays an exponential moving average over ``ema_span``
    steps. A run without metrics is skipped with a warning; none with any is a :class:`HoneError`.
    """
    import logging

    import matplotlib

    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = logging.getLogger("hone")
    runs = [Path(d) for d in ([ckpt_output_dirs] if isinstance(ckpt_output_dirs, (str, Path)) else ckpt_output_dirs)]
    if not runs:
        raise HoneError("no run to plot", where="ckpt_output_dirs", fix="pass one ckpt_output_dir or a list of them")
    names = list(labels or []) + [r.name for r in runs[len(labels or []):]]
    out = Path(output_path) if output_path else TrainingLayout(runs[0]).root / "loss_plot.png"
    fig, ax = plt.subplots(figsize=(10, 6))
    keys, plotted = set(), 0
    for i, (run, label) in enumerate(zip(runs, names)):
        try:
            steps, losses, key = read_losses(_metrics_file(run, metrics_file), metric_keys)
        except HoneError as err:
            log.warning("%s", err)
            continue
        if not losses:
            log.warning("no loss values in the metrics of %s", run)
            continue
        color = COLORS[i % len(COLORS)]
        ax.plot(steps, losses, color=color, label=label, marker="o" if len(steps) < 40 else None, ms=3)
        if ema:
            ax.plot(steps, _ema(losses, ema_span), color=color, linestyle="--", alpha=0.7, label=f"{label} (EMA)")
        keys.add(key)
        plotted += 1
    if not plotted:
        plt.close(fig)
        raise HoneError("no loss values found in any of the runs", where=", ".join(map(str, runs)),
                        fix="plot the ckpt_output_dir of a run that completed at least one step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per loss token)")
    ax.set_title(f"{', '.join(sorted(keys))} over training steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    plt.close(fig)
    return str(out)
