"""sessions, show and report: reading stored sessions (safe beside a running search)."""
from __future__ import annotations

import json
import time

from rich.table import Table

from selfpruner.core.config import reconstruction_of

from .common import _f, _print_shares, out


def cmd_sessions(args) -> int:
    from selfpruner.core.session_files import list_sessions
    rows = list_sessions(args.sessions_dir)
    if not rows:
        out.print(f"no sessions in {args.sessions_dir}/")
        return 0
    t = Table("id", "kind", "status", "model", "β", "proposer", "best", "final", "gens", "created")
    for r in rows:
        if r["error"]:
            t.add_row(r["id"], "?", "[red]unreadable[/]", r["error"][:50], "", "", "", "", "", "")
            continue
        t.add_row(r["id"], r["kind"], r["status"], (r["model"] or "")[:28], _f(r["beta"], 2), r["proposer"] or "",
                  _f(r["best_fitness"]), _f(r["final_ppl"]), str(r["generations"]),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])))
    out.print(t)
    return 0


def _status_line(st, status: str) -> str:
    from selfpruner.core.run_lock import holder_text, shown_status
    shown = shown_status(st.path, status)
    if shown == "running":
        return f"running (by {holder_text(st)})"
    if shown == "died":
        return f"died (its process is gone; continue it with: selfpruner search --resume {st.path.stem})"
    return shown


def cmd_show(args) -> int:
    from selfpruner.core.results.session_summary import candidate_history, history_csv
    from selfpruner.core.session_files import resolve_session
    from selfpruner.core.store import Store
    with Store(resolve_session(args.session, args.sessions_dir), readonly=True) as st:
        if args.csv or args.history_json:  # the whole candidate history, for a spreadsheet or a script
            rows = candidate_history(st)
            print(history_csv(rows) if args.csv else json.dumps({"session": st.session()["id"], "candidates": rows}),
                  end="" if args.csv else "\n")
            return 0
        _show(st, args)
    return 0


def _show(st, args) -> None:
    s = st.session()
    out.print(f"[bold]{s['id']}[/] {s['kind']} search, status {_status_line(st, s['status'])}")
    out.print(f"model {s['model_name']} (fingerprint {s['model_fingerprint']}), data {s['data_source']}")
    if s.get("calib_key"):
        bos = s.get("bos_token")
        out.print(f"calibration {s['calib_key']}, " + (f"BOS token {bos} at every window" if bos is not None
                                                        else "no BOS token"))
    cfg = s["config"]
    if s["kind"] in ("layer", "baseline"):
        out.print(f"fitness {cfg.get('fitness', 'ppl')}, importance {cfg.get('importance', 'wanda-sp')}, "
                  f"{cfg.get('split', 'rule')} split, reconstruction {reconstruction_of(cfg)}"
                  + (f", race {cfg['race']}" if cfg.get("race") else ""))
    out.print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    gens = st.generations()
    fit = cfg.get("fitness", "ppl")  # what the search minimised: ppl, or KL from the dense model
    if gens:
        t = Table("generation", f"best {fit}", f"mean {fit}", "population")
        for g in gens:
            t.add_row(str(g["generation"]), _f(g["best"]), _f(g["mean"]), str(len(g["population"])))
        out.print(t)
    calls = st.calls()
    if calls:
        errs = sum(1 for c in calls if c["error"])
        lat = sum(c["latency_s"] or 0 for c in calls)
        out.print(f"LLM calls: {len(calls)} ({errs} with errors), {lat:.1f}s in total")
    _print_shares(st)
    for r in st.results():
        out.print(f"result {r['kind']}/{r['name']}: " + json.dumps(r["payload"])[:400])
    if s["best_candidate"] is not None:
        best = next(c for c in st.candidates() if c["id"] == s["best_candidate"])
        out.print(f"best candidate #{best['id']} ({best['origin']}, gen {best['generation']}): search {fit} "
                  f"{_f(s['best_fitness'])}, final ppl {_f(s['final_ppl'])}")
        g = best["genes"]
        out.print("rates: " + json.dumps(list(g.layers)))
        if g.attention is not None:
            out.print("attention: " + json.dumps(list(g.attention)))
    if args.json:
        out.print_json(json.dumps({"session": s, "generations": gens}, default=str))


def cmd_report(args) -> int:
    from selfpruner.core.results.report import build_report
    from selfpruner.core.session_files import resolve_session

    page = build_report([resolve_session(ref, args.sessions_dir) for ref in args.session], args.out)
    out.print(f"report of {len(args.session)} session(s): {page}")
    return 0


def cmd_control(args) -> int:
    """Ask the process running a session to pause, resume or stop; --wait: until it has obeyed."""
    from selfpruner.core.errors import UserError
    from selfpruner.core.run_lock import is_live
    from selfpruner.core.session_files import resolve_session
    from selfpruner.core.steering import request
    from selfpruner.core.store import Store

    with Store(resolve_session(args.session, args.sessions_dir)) as st:
        cid = request(st, args.command)
        sid = st.session()["id"]
        out.print(f"asked session {sid} to {args.command} (request {cid}); its runner obeys at the next evaluation "
                  f"boundary")
        deadline = time.time() + (args.wait or 0)
        while args.wait:
            row = next(r for r in st.controls() if r["id"] == cid)
            if row["obeyed"] is not None:
                out.print(f"obeyed after {row['obeyed'] - row['requested']:.1f} s")
                break
            if row["note"] or not is_live(st.path):  # its run ended without obeying it (killed, or done)
                row = next(r for r in st.controls() if r["id"] == cid)
                if row["obeyed"] is None:
                    raise UserError(f"session {sid} did not obey {args.command}: its run ended first")
            if time.time() > deadline:
                raise UserError(f"session {sid} has not obeyed {args.command} within {args.wait:g} s (still stored: "
                                f"it will when it reaches an evaluation boundary)")
            time.sleep(0.2)
    return 0
