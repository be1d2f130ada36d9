"""``r1hpc report <run_dir>``: one self-contained HTML page of a run (PNG plots inlined as base64,
no scripts, no network: a Content-Security-Policy forbids any fetch) and the same plots as PNG
files, in ``<run_dir>/report/``.

Reads ``metrics.jsonl`` and what the monitor saved under ``monitor/``. A line that is not JSON
(a run killed mid-write) is skipped and named on the page and on stderr, never silently.
"""
from __future__ import annotations

import base64
import html
import json
import math
import sys
from pathlib import Path
from typing import Callable, Optional

# (file stem, title, [(metric key, label)], y label)
CURVES = [
    ("reward", "Reward", [("reward/mean", "total"), ("reward/format", "format")], "reward"),
    ("accuracy", "Accuracy", [("reward/accuracy", "train samples"), ("monitor/accuracy_with_marker", "with marker"),
                              ("monitor/accuracy_without_marker", "without marker"), ("eval/pass@1", "held-out pass@1")],
     "accuracy"),
    ("length", "Response length", [("response_length/mean", "mean"), ("response_length/max", "max")], "tokens"),
    ("entropy", "Token entropy", [("monitor/entropy_mean", "mean"), ("monitor/entropy_q1", "1st quarter"),
                                  ("monitor/entropy_q4", "last quarter"), ("monitor/entropy_after_marker",
                                                                           "after a marker"),
                                  ("monitor/forking_frac", "forking-token share")], "nats / share"),
    ("markers", "Reflection markers", [("monitor/marker_rate", "share of responses with a marker"),
                                       ("monitor/markers_per_response", "markers per response")], "per response"),
    ("aha", "Aha events", [("monitor/aha_events", "aha events (changed answer, ends correct)"),
                           ("monitor/answer_changes", "answer changes after a marker")], "responses per step"),
    ("attention", "Attention after markers", [("monitor/attn_distant_before", "distant mass before marker"),
                                              ("monitor/attn_distant_after", "distant mass after marker")],
     "attention mass"),
    ("mismatch", "Rollout / trainer mismatch", [("sampling/sampling_logp_difference/mean", "mean |log-prob gap|"),
                                               ("rollout_corr/ratio_out_of_band_frac", "ratio outside [1/2, 2]"),
                                               ("rollout_corr/masked_frac", "masked by algo.mis_low/high"),
                                               ("rollout_corr/router_agreement", "MoE router agreement")],
     "nats / share"),
]
TRAJECTORY_EXAMPLES = 4


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    """Records of a JSONL file; bad lines are appended to ``problems`` as ``file:line: why``."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not JSON ({e.msg}); line skipped")
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            problems.append(f"{path}:{n}: not a JSON object; line skipped")
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curve_plot(rows: list[dict], title: str, keys: list[tuple[str, str]], ylabel: str, out: Path) -> bool:
    """One panel of per-step curves; False (nothing written) when none of the keys was logged."""
    present = [(k, label) for k, label in keys if _series(rows, k)[0]]
    if not present:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, label in present:
        x, y = _series(rows, k)
        ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3, lw=1.3, label=label)
    alarms = sorted({k for r in rows for k in r if k.startswith("alarm/")})
    for k in alarms:
        for a, b in _spans(rows, k):
            ax.axvspan(a - 0.5, b + 0.5, color="red", alpha=0.08)
    ax.set_title(title)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _trajectory_plot(examples: list[dict], out: Path) -> bool:
    """Per-token entropy of example responses (the latest step's, those with markers first), each
    marker drawn as a labelled vertical line at its token."""
    if not examples:
        return False
    last = max(e.get("step", 0) for e in examples)
    chosen = sorted([e for e in examples if e.get("step") == last], key=lambda e: not e.get("markers"))
    chosen = [e for e in chosen if e.get("entropies")][:TRAJECTORY_EXAMPLES]
    if not chosen:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 2.2 * len(chosen)), squeeze=False)
    for ax, e in zip(axes[:, 0], chosen):
        ent = e["entropies"]
        ax.plot(range(len(ent)), ent, lw=1.1, color="tab:blue")
        for m in e.get("markers", []):
            ax.axvline(m["token"], color="tab:red", lw=1.2, ls="--")
            ax.text(m["token"], max(ent) if ent else 1.0, f" {m['marker']}", color="tab:red", fontsize=8, va="top")
        verdict = "correct" if e.get("correct") else "wrong"
        ax.set_title(f"step {e.get('step')}: {len(ent)} tokens, {len(e.get('markers', []))} markers, {verdict}",
                     fontsize=9)
        ax.set_ylabel("entropy")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("response token")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


def _spans(rows: list[dict], key: str) -> list[tuple[int, int]]:
    """Runs of consecutive steps where ``key`` was 1."""
    spans: list[tuple[int, int]] = []
    for r in rows:
        if r.get(key) == 1.0:
            if spans and spans[-1][1] == r["step"] - 1:
                spans[-1] = (spans[-1][0], r["step"])
            else:
                spans.append((r["step"], r["step"]))
    return spans


def _overhead(rows: list[dict]) -> Optional[float]:
    mon = sum(r.get("timing/monitor_s") or 0.0 for r in rows)
    step = sum(r.get("timing/step_s") or 0.0 for r in rows)
    return mon / step if step and any("timing/monitor_s" in r for r in rows) else None


def _esc(x) -> str:
    return html.escape(str(x))


def _aha_table(events: list[dict], limit: int = 10) -> str:
    if not events:
        return "<p>No aha events were recorded.</p>"
    rows = []
    for e in events[-limit:]:
        changes = "; ".join(f"{_esc(c['before'])} &rarr; {_esc(c['after'])} (after &ldquo;{_esc(c['marker'])}&rdquo;)"
                            for c in e.get("answer_changes", []))
        rows.append(f"<tr><td>{_esc(e.get('step'))}</td><td><pre>{_esc(e.get('prompt', ''))}</pre></td>"
                    f"<td><pre>{_esc(e.get('response', ''))}</pre></td><td>{changes}</td>"
                    f"<td>{_esc(e.get('reference_answer'))}</td></tr>")
    return ("<table><tr><th>step</th><th>prompt</th><th>response</th><th>answer change</th><th>reference</th></tr>"
            + "".join(rows) + "</table>")


_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
          ".plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 480px}figcaption{font-weight:bold}"
          ".wide{flex-basis:100%}"
          "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}table{border-collapse:collapse;font-size:.85em}"
          "td,th{border:1px solid #ccc;padding:.3em;vertical-align:top}pre{white-space:pre-wrap;margin:0;"
          "max-width:40em}.warn{color:#a00}</style>")


def _read_run(run_dir: Path, metrics_path: Path, problems: list[str]) -> tuple[list[dict], ...]:
    """(metric rows sorted by step, examples, aha events, forking-token records); unreadable lines
    are added to ``problems`` and named on stderr."""
    rows = sorted((r for r in read_jsonl(metrics_path, problems) if isinstance(r.get("step"), int)),
                  key=lambda r: r["step"])
    examples = read_jsonl(run_dir / "monitor" / "examples.jsonl", problems)
    events = read_jsonl(run_dir / "monitor" / "aha_events.jsonl", problems)
    forking = read_jsonl(run_dir / "monitor" / "forking_tokens.jsonl", problems)
    for p in problems:
        print(f"r1hpc report: {p}", file=sys.stderr)
    return rows, examples, events, forking


def _plots(rows: list[dict], examples: list[dict], out_dir: Path) -> list[tuple[str, str, Path]]:
    """(stem, title, PNG) of every plot that had data."""
    figures: list[tuple[str, str, Path]] = []
    for stem, title, keys, ylabel in CURVES:
        png = out_dir / f"{stem}.png"
        if _curve_plot(rows, title, keys, ylabel, png):
            figures.append((stem, title, png))
    png = out_dir / "entropy_trajectories.png"
    if _trajectory_plot(examples, png):
        figures.append(("entropy_trajectories", "Entropy along example responses (markers dashed)", png))
    return figures


def _page_head(run_dir: Path, metrics_path: Path, rows: list[dict], overhead: Optional[float],
               problems: list[str]) -> list[str]:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>r1hpc report: {_esc(run_dir.name)}</title>",
        _STYLE + "</head><body>",
        f"<h1>Run {_esc(run_dir.name)}</h1>",
        f"<p>{len({r['step'] for r in rows if 'reward/mean' in r})} GRPO steps from <code>{_esc(metrics_path)}</code>. Red bands mark steps with a "
        "training-health alarm.</p>",
    ]
    if overhead is not None:
        parts.append(f"<p>Monitor overhead: {100 * overhead:.2f}% of GRPO step time "
                     "(sum of <code>timing/monitor_s</code> over sum of <code>timing/step_s</code>).</p>")
    return parts + [f"<p class='warn'>{_esc(p)}</p>" for p in problems]


def _plots_section(figures: list[tuple[str, str, Path]]) -> str:
    parts = ["<h2>Plots</h2><div class='plots'>"]
    for stem, title, png in figures:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        wide = " class='wide'" if stem == "entropy_trajectories" else ""
        parts.append(f"<figure{wide}><figcaption>{_esc(title)} (<code>{png.name}</code>)</figcaption>"
                     f"<img id='plot-{stem}' alt='{_esc(title)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</div>")
    return "\n".join(parts)


def _alarms_section(rows: list[dict]) -> str:
    alarm_rows = "".join(f"<tr><td>{_esc(k[len('alarm/'):].replace('_', ' '))}</td><td>"
                         + ", ".join(f"{a}&ndash;{b}" if a != b else str(a) for a, b in _spans(rows, k)) + "</td></tr>"
                         for k in sorted({k for r in rows for k in r if k.startswith("alarm/")}) if _spans(rows, k))
    return "<h2>Training-health alarms</h2>\n" + (
        f"<table><tr><th>alarm</th><th>steps</th></tr>{alarm_rows}</table>" if alarm_rows else "<p>No alarm fired.</p>")


def build_report(run_dir: Path, out_dir: Optional[Path] = None, say: Callable[[str], None] = print) -> Path:
    """Write the PNGs and ``index.html``; returns the HTML path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no metrics.jsonl in it")
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    rows, examples, events, forking = _read_run(run_dir, metrics_path, problems)
    figures = _plots(rows, examples, out_dir)
    overhead = _overhead(rows)
    top = forking[-1]["top"] if forking else []
    parts = [*_page_head(run_dir, metrics_path, rows, overhead, problems), _plots_section(figures),
             _alarms_section(rows)]
    if top:
        parts.append("<h2>Most frequent forking tokens (last saved step)</h2><p>"
                     + ", ".join(f"<code>{_esc(t)}</code> &times;{c}" for t, c in top) + "</p>")
    parts.append(f"<h2>Aha events ({len(events)} saved)</h2>{_aha_table(events)}</body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    share = f"; monitor overhead {100 * overhead:.2f}% of GRPO step time" if overhead is not None else ""
    say(f"[report] {index} ({len(figures)} plots; PNGs beside it){share}")
    return index
