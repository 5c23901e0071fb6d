"""``report.html``: one self-contained page per pipeline run (images inlined, no scripts, no server needed)."""
from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping

from hone.data.stage import REPORT_FILE as DATASET_REPORT
from hone.io import atomic_write_text
from hone.layout import LOSS_CHART_PNG, STAGES, PipelineLayout
from hone.secrets import scrub_text

SECTIONS = ("summary", "dataset", "training", "evaluation", "registry", "parameters")

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:0 0 12px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:18px 20px;margin:16px 0}
table{border-collapse:collapse;width:100%;font-size:14px} th,td{padding:5px 8px;border-bottom:1px solid #eceef2;text-align:left}
th{background:#f1f3f6;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#667085} .ok{color:#067647;font-weight:600} .bad{color:#b42318;font-weight:600}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;background:#eef2ff}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0} .card{flex:1;min-width:150px;background:#f8fafc;
border:1px solid #e2e5ea;border-radius:6px;padding:10px 12px} .card b{display:block;font-size:20px}
img{max-width:100%;border:1px solid #eceef2;border-radius:4px} code{font-size:13px;word-break:break-all}
details summary{cursor:pointer;color:#344054}
"""


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="muted">({escape(alt)}: no image)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return escape(str(x))
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
    if isinstance(x, (dict, list)):
        return f"<code>{escape(json.dumps(x))}</code>"
    return escape(str(x))


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{_fmt(c)}</td>' if i in numeric else f"<td>{_fmt(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cards(items: Iterable[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><span class="muted">{escape(k)}</span><b>{_fmt(v)}</b>'
                                           f"</div>" for k, v in items) + "</div>"


def _missing(info: Mapping[str, Any] | None) -> str:
    """A stage that has not completed: not run, running, or failed with its error."""
    if not info:
        return '<p class="muted">not run yet</p>'
    if info.get("status") == "failed":
        return f'<p class="bad">failed</p><pre>{escape(info.get("error", ""))}</pre>'
    return f'<p class="muted">{escape(info.get("status", ""))}</p>'


def _dataset(run_dir: Path, info: Mapping[str, Any]) -> str:
    name = info.get("files", {}).get("report", DATASET_REPORT)
    rep = _read_json(PipelineLayout(run_dir).stage("dataset") / name)
    if rep is None:
        return f'<p class="muted">({escape(name)} is missing)</p>'
    rows = rep.get("rows", {})
    out = [f"<p>Source <code>{escape(str(rep.get('source')))}</code>, format <span class=pill>{escape(str(rep.get('format')))}"
           f"</span>, content SHA-256 <code>{escape(str(rep.get('sha256', ''))[:16])}…</code></p>",
           _cards([("rows read", rows.get("read")), ("valid", rows.get("valid")), ("invalid", rows.get("invalid")),
                   ("train", rows.get("train")), ("eval", rows.get("eval"))])]
    turns = rep.get("turns") or {}
    roles = rep.get("roles") or {}
    if roles:
        out.append("<h3>Messages by role</h3>" + _table(["role", "messages"], sorted(roles.items()), numeric=[1]))
    if turns:
        out.append(f"<p>Messages per conversation: min {turns.get('min')}, mean {turns.get('mean')}, "
                   f"max {turns.get('max')}.</p>")
    tokens = rep.get("token_lengths")
    if tokens:
        out.append("<h3>Tokens per sample</h3>" + _table(["statistic", "value"], sorted(tokens.items())))
    return "".join(out)


def _training(run_dir: Path, info: Mapping[str, Any]) -> str:
    s, files = info.get("summary", {}), info.get("files", {})
    d = PipelineLayout(run_dir).stage("training")
    out = [_cards([("algorithm", s.get("algorithm")), ("steps", s.get("steps")), ("epochs", s.get("epochs")),
                   ("first loss", s.get("first_loss")), ("final loss", s.get("final_loss")),
                   ("seconds", s.get("train_seconds"))]),
           f"<p>Base model <code>{escape(str(s.get('base_model')))}</code>; {escape(str(s.get('data', '')))}.</p>",
           _img(d / files.get("loss_chart_png", LOSS_CHART_PNG), "training loss")]
    for note in s.get("notes", []):
        out.append(f'<p class="muted">{escape(note)}</p>')
    out.append(f"<p>Model: <code>{escape(str(d / files.get('model', '')))}</code></p>")
    return "".join(out)


def _evaluation(run_dir: Path, info: Mapping[str, Any]) -> str:
    d = PipelineLayout(run_dir).stage("evaluation")
    s = info.get("summary", {})
    comp = _read_json(d / "comparison.json")
    out = []
    if comp:
        flagged = set(comp.get("forgetting", []))
        rows = []
        for m in comp["metrics"]:
            change = m.get("change")
            rows.append([m["name"], m.get("base"), m.get("tuned"), m.get("delta"),
                         "" if change is None else f"{change:+.1%}", "forgetting" if m["name"] in flagged else ""])
        out.append(f"<p>Base <code>{escape(str(comp.get('base')))}</code> vs fine-tuned; a metric that gets worse by "
                   f"more than {comp.get('threshold', 0):.0%} of its base value is flagged.</p>")
        table = _table(["metric", "base", "tuned", "delta", "change (good direction)", ""], rows, numeric=[1, 2, 3, 4])
        out.append(table.replace("<td>forgetting</td>", '<td class="bad">forgetting</td>'))
        out.append(f'<p class="{"bad" if flagged else "ok"}">'
                   + (f"{len(flagged)} metric(s) flagged as forgetting" if flagged else "no forgetting flagged")
                   + "</p>")
        out.append(_img(d / "comparison.png", "base vs tuned"))
    else:
        out.append(_table(["metric", "value"], sorted(s.get("metrics", {}).items()), numeric=[1]))
    return "".join(out)


def _registry(run_dir: Path, info: Mapping[str, Any]) -> str:
    s = info.get("summary", {})
    if s.get("model_id") == "SKIPPED":
        return f'<p><span class="pill">SKIPPED</span> {escape(str(s.get("reason", "")))}</p>'
    rows = [(k, s.get(k)) for k in ("model_id", "backend", "uri", "created", "author", "run_id", "backend_id")
            if s.get(k) not in (None, "")]
    meta = s.get("metadata") or {}
    out = _table(["field", "value"], rows)
    if meta:
        out += "<details><summary>lineage metadata</summary>" + _table(["key", "value"], sorted(meta.items())) + \
               "</details>"
    return out


_IMAGE_DATA = re.compile(r'(src="data:image/png;base64,[A-Za-z0-9+/=]*")')


def _scrubbed(html: str) -> str:
    """``html`` with every secret masked (:func:`hone.secrets.scrub_text`: this process's secret values, credentials
    in URLs, token shapes, ``SECRET_NAME=value``), the inlined images left as they are."""
    parts = _IMAGE_DATA.split(html)
    return "".join(p if i % 2 else scrub_text(p) for i, p in enumerate(parts))


def render(run_dir: Path, manifest: Mapping[str, Any]) -> str:
    """The report's HTML for ``manifest`` (the runner's manifest.json), secrets masked (:func:`_scrubbed`)."""
    stages = manifest.get("stages", {})
    status = manifest.get("status", "?")
    rows = []
    for name in STAGES:
        st = stages.get(name, {})
        rows.append([name, st.get("status", "not run") + (" (cached)" if st.get("cached") else ""),
                     st.get("duration_s"), (st.get("inputs_sha256") or "")[:12], (st.get("outputs_sha256") or "")[:12]])
    summary = (f'<p>Algorithm <span class="pill">{escape(str(manifest.get("algorithm")))}</span>, status '
               f'<span class="{"ok" if status == "completed" else "bad"}">{escape(status)}</span>, updated '
               f'{escape(str(manifest.get("updated")))}, hone {escape(str(manifest.get("hone_version")))}.</p>'
               + _table(["stage", "status", "seconds", "inputs sha256", "outputs sha256"], rows, numeric=[2]))
    params = _table(["parameter", "value"], sorted(manifest.get("params", {}).items()))
    def stage(name: str, section: Any) -> str:
        info = stages.get(name)
        return section(run_dir, info) if info and info.get("status") == "completed" else _missing(info)

    body = {
        "summary": ("Run", summary),
        "dataset": ("1 · Dataset", stage("dataset", _dataset)),
        "training": ("2 · Training", stage("training", _training)),
        "evaluation": ("3 · Evaluation", stage("evaluation", _evaluation)),
        "registry": ("4 · Model registry", stage("registration", _registry)),
        "parameters": ("Parameters", f"<details><summary>all pipeline parameters</summary>{params}</details>"),
    }
    sections = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>'
                       for sid, (title, html) in body.items())
    title = f"hone pipeline · {manifest.get('algorithm')} · {run_dir.name}"
    return _scrubbed(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
                     f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
                     f'<body><main><h1>{escape(title)}</h1><p class="muted"><code>{escape(str(run_dir))}</code></p>'
                     f"{sections}</main></body></html>\n")


def write_report(run_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/report.html`` from the manifest (read from the run directory when not given)."""
    layout = PipelineLayout(run_dir)
    manifest = manifest if manifest is not None else json.loads(layout.manifest.read_text())
    return atomic_write_text(layout.report, render(layout.run_dir, manifest))
