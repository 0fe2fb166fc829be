"""Static HTML reports of stored sessions: matplotlib figures (PNG and SVG beside the page) and tables, offline.

`build_report([db, ...], out_dir)` writes out_dir/index.html with, per layer-rate session: the per-layer rate
profile of its best candidate against uniform and OWL (stored at search start), fitness per evaluation and per
generation (best and mean), LLM call statistics (latency, repaired share, fallback share), final ppl,
zero-shot accuracy and speed where the session recorded them, and its config. Several sessions share one
summary table and overlaid profile and trajectory figures. The page has no scripts and loads nothing from the
network. Baseline sessions show their one candidate; Pruner-Zero (metric) sessions their fitness trajectory.
"""
from __future__ import annotations

import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..config import reconstruction_of
from ..store import Store
from .session_summary import proposal_shares


@dataclass
class SessionView:
    """What a report needs of one session, read once from its DB."""
    id: str
    kind: str
    model: str
    beta: float | None
    proposer: str
    status: str
    config: dict
    best_rates: list[float] | None
    best_fitness: float | None
    final_ppl: float | None
    evaluations: list[float]  # search fitness in evaluation order
    generations: list[tuple[int, float, float]]  # (generation, best, mean)
    references: dict = field(default_factory=dict)  # uniform / owl rates
    calls: dict | None = None
    results: dict = field(default_factory=dict)  # kind -> [payload]
    best_attention: list[float] | None = None  # --split search: the best candidate's attention-unit rates

    @property
    def label(self) -> str:
        how = reconstruction_of(self.config)
        comp = {"none": "", "bias": " +comp"}.get(how, f" +{how}")
        return f"{self.id[-4:]} {self.proposer}{comp} β={self.beta:g}" if self.beta is not None else self.id


def read_session(path) -> SessionView:
    with Store(path, readonly=True) as st:
        s = st.session()
        cands = {c["id"]: c for c in st.candidates()}
        best = cands.get(s["best_candidate"])
        if s["kind"] == "metric":
            evals = [m["fitness"] for m in st.metric_candidates()]
        else:
            budget = s["config"].get("budget_tokens")  # early --race stages score fewer tokens: left out
            evals = [e["fitness"] for e in st.evaluations() if e["kind"] == "search"
                     and (not s["config"].get("race") or e["budget_tokens"] == budget)]
        results: dict[str, list] = {}
        for r in st.results():
            results.setdefault(r["kind"], []).append(r["payload"])
        refs = (results.get("reference") or [{}])[0]
        g = best["genes"] if best else None
        rates, attention = (list(g.layers), g.attention_list) if g else (None, None)
        return SessionView(s["id"], s["kind"], s["model_name"] or "", s["beta"], s["proposer"] or "",
                           s["status"] or "?", s["config"], rates, s["best_fitness"],
                           s["final_ppl"], evals, [(g["generation"], g["best"], g["mean"]) for g in st.generations()],
                           refs, call_stats(st), results, attention)


def call_stats(st: Store) -> dict | None:
    calls = st.calls()
    sh = proposal_shares(st)
    if not calls and not sh:
        return None
    lat = [c["latency_s"] for c in calls if c["latency_s"]]
    llm_cands = [c for c in st.candidates() if c["call_id"] is not None]
    return {"calls": len(calls), "failed": sum(1 for c in calls if c["error"]),
            "latency_median": statistics.median(lat) if lat else None, "latency_total": sum(lat),
            "repaired": (sum(c["repaired"] for c in llm_cands) / len(llm_cands)) if llm_cands else None,
            "fallback": (sh["fallback"] / sh["asked"]) if sh and sh["asked"] else None}


# ---- figures ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path, stem: str) -> str:
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)
    fig.savefig(out / f"{stem}.svg")
    _pyplot().close(fig)
    return stem


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def profile_figure(views: list[SessionView], out: Path, stem: str) -> str | None:
    shown = [v for v in views if v.best_rates]
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    refs = shown[0].references
    n = len(shown[0].best_rates)
    x = list(range(n))
    if refs.get("owl") and len(refs["owl"]) == n:
        ax.plot(x, refs["owl"], color="0.55", lw=1.2, ls="--", label="OWL")
    if shown[0].beta is not None:
        ax.axhline(shown[0].beta, color="0.3", lw=1, ls=":", label=f"uniform β={shown[0].beta:g}")
    width = 0.8 / len(shown)
    for k, v in enumerate(shown):
        at = [i - 0.4 + width * (k + 0.5) for i in range(len(v.best_rates))]
        bars = ax.bar(at, v.best_rates, width=width, label=f"{v.label} best", alpha=0.85)
        if v.best_attention:  # --split search: the share of each layer's heads removed, over its bar
            ax.plot(at, v.best_attention, ls="none", marker="_", ms=9, mew=2, color=bars.patches[0].get_facecolor(),
                    label=f"{v.label} attention share removed")
    _integer_ticks(ax)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("pruning rate")
    top = max(1e-3, *(max(v.best_rates + (v.best_attention or [])) for v in shown))
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set_title("per-layer rates of the best candidate" + (" (references: the first session's)" if len(shown) > 1
                                                           else ""))
    return _save(fig, out, stem)


def fitness_figure(views: list[SessionView], out: Path, stem: str) -> str | None:
    shown = [v for v in views if v.evaluations]
    if not shown:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for v in shown:
        pts = [(i, f) for i, f in enumerate(v.evaluations) if f is not None and math.isfinite(f)]
        a1.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.6, label=v.label)
        if v.generations:
            g = [r[0] for r in v.generations]
            line = a2.plot(g, [r[1] for r in v.generations], marker="o", ms=3, label=f"{v.label} best")[0]
            a2.plot(g, [r[2] for r in v.generations], ls="--", color=line.get_color(), label=f"{v.label} mean")
    a1.set_xlabel("evaluation")
    a1.set_ylabel("search ppl")
    a1.set_title("every evaluation")
    a2.set_xlabel("generation")
    a2.set_ylabel("ppl")
    a2.set_title("best and mean of the population")
    for a in (a1, a2):
        _integer_ticks(a)
        if any(f > 0 for v in shown for f in v.evaluations if f is not None and math.isfinite(f)):
            a.set_yscale("log")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return _save(fig, out, stem)


# ---- HTML ------------------------------------------------------------------------------------------------
CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #bbb;padding:.25em .6em;font-size:90%}
th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;font-size:85%;overflow-x:auto}
.num{text-align:right}"""


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else str(x)
    return html.escape(str(x))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='num'>{_fmt(c)}</td>" if isinstance(c, (int, float)) else
                                   f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(stem: str | None, alt: str) -> str:
    if stem is None:
        return ""
    return (f"<p><img src='{stem}.png' alt='{html.escape(alt)}'><br>"
            f"<small><a href='{stem}.svg'>SVG</a></small></p>")


def _zero_shot(v: SessionView) -> str:
    runs = v.results.get("lm_eval") or []
    if not runs:
        return ""
    rows = [[task, metric, val] for run in runs for task, ms in run.get("results", {}).items()
            for metric, val in ms.items() if isinstance(val, (int, float))]
    return "<h4>zero-shot (lm-eval)</h4>" + _table(["task", "metric", "value"], rows)


def _speed(v: SessionView) -> str:
    from .speed import to_markdown

    out = []
    for rep in v.results.get("speed") or []:
        try:
            out.append(f"<h4>speed</h4><pre>{html.escape(to_markdown(rep))}</pre>")
        except (KeyError, TypeError, ValueError):
            out.append(f"<h4>speed</h4><pre>{html.escape(json.dumps(rep, indent=1)[:3000])}</pre>")
    return "".join(out)


def _session_section(v: SessionView, out: Path) -> str:
    parts = [f"<h2 id='{html.escape(v.id)}'>{html.escape(v.id)}</h2>",
             f"<p>{html.escape(v.kind)} search on {html.escape(v.model)}, status {html.escape(v.status)}</p>"]
    parts.append(_figure(profile_figure([v], out, f"{v.id}-profile"), "per-layer rates"))
    parts.append(_figure(fitness_figure([v], out, f"{v.id}-fitness"), "fitness trajectory"))
    if v.calls:
        c = v.calls
        parts.append("<h4>LLM calls</h4>" + _table(
            ["calls", "failed", "median latency s", "total latency s", "repaired share", "fallback share"],
            [[c["calls"], c["failed"], c["latency_median"], c["latency_total"], c["repaired"], c["fallback"]]]))
    parts.append(_zero_shot(v))
    parts.append(_speed(v))
    cfg_rows = [[k, json.dumps(val) if isinstance(val, (list, dict)) else val] for k, val in v.config.items()
                if val is not None]
    parts.append("<details><summary>config</summary>" + _table(["setting", "value"], cfg_rows) + "</details>")
    return "\n".join(p for p in parts if p)


def build_report(paths: list, out_dir) -> Path:
    """Write out_dir/index.html (and its figures); returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = [read_session(p) for p in paths]
    summary = _table(["session", "kind", "model", "β", "proposer", "reconstruction", "evaluations", "best search ppl",
                      "final ppl", "status"],
                     [[v.id, v.kind, v.model, v.beta, v.proposer, reconstruction_of(v.config),
                       len(v.evaluations), v.best_fitness, v.final_ppl, v.status] for v in views])
    body = ["<h1>selfpruner report</h1>", summary]
    if len(views) > 1:
        body.append("<h2>side by side</h2>")
        body.append(_figure(profile_figure(views, out, "all-profiles"), "per-layer rates of every session"))
        body.append(_figure(fitness_figure(views, out, "all-fitness"), "fitness of every session"))
    body += [_session_section(v, out) for v in views]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>selfpruner report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
