"""Evaluate a baseline rate vector (uniform, OWL or FLAP) exactly as a searched one is, and store it."""
from __future__ import annotations

from ..config import ConfigError, SearchConfig
from ..events import EventBus, SessionStarted, Stage
from ..layer_search.workbench import Workbench
from ..run_lock import new_locked_session
from ..types import Proposal
from .rates import flap_rates, owl_rates, uniform_rates


def baseline_rates(bench: Workbench, method: str, beta: float, *, lam: float = 0.08, m: float = 5.0,
                   lo: float = 0.0, hi: float = 1.0) -> list[float]:
    if method == "uniform":
        return uniform_rates(bench.lm.arch.n_layers, beta)
    if method == "owl":
        return owl_rates(bench.lm.arch, bench.stats, beta, lam, m, lo, hi)
    if method == "flap":  # FLAP's global structure, as layer rates (lo/hi and the exact mean by repair)
        from ..proposers.repair import repair
        from ..types import Problem
        rates = flap_rates(bench.lm.arch, bench.stats, beta)
        return repair(rates, Problem(bench.lm.name, len(rates), beta, lo, hi))[0]
    raise ValueError(f"unknown baseline {method!r}")


def run_baseline(cfg: SearchConfig, method: str, *, bus: EventBus | None = None, bench: Workbench | None = None,
                 lam: float = 0.08, m: float = 5.0) -> dict:
    if cfg.split == "search":
        raise ConfigError("--split search is for searches: a baseline's rates carry no attention genes (use rule or flap)")
    bus = bus or EventBus()
    bench = bench or Workbench.from_config(cfg, bus)
    bench.pin_dtype(cfg)
    bench.set_pruning(cfg.reconstruct, cfg.channel_multiple, cfg.split, cfg.sequential)
    rates = baseline_rates(bench, method, cfg.beta, lam=lam, m=m, lo=cfg.lo, hi=cfg.hi)
    conf = cfg.to_dict() | {"method": method, "owl_lambda": lam, "owl_m": m}
    store, lock = new_locked_session(cfg.sessions_dir, "baseline", conf, model_name=bench.lm.name,
                                     model_fingerprint=bench.lm.fingerprint, data_source=bench.data.source,
                                     beta=cfg.beta, proposer=method, calib_key=bench.calib_key,
                                     bos_token=bench.data.bos)
    outcome = "failed"
    try:
        sid = store.session_id
        bus.emit(SessionStarted(sid, str(store.path), conf, bench.lm.arch.n_layers))
        (cid,) = store.add_candidates(0, "init", [Proposal(rates, origin=method)])
        bus.emit(Stage("search", f"{method}: search-time fitness"))
        search_ppl, secs = bench.fitness(rates, cfg.budget_tokens)
        store.add_evaluation(cid, search_ppl, budget_tokens=cfg.budget_tokens, seq_len=cfg.seq_len, eval_s=secs)
        bus.emit(Stage("final", f"{method}: final evaluation"))
        final_ppl, secs, tokens = bench.final_ppl(rates, cfg.final_tokens)
        store.add_evaluation(cid, final_ppl, kind="final", budget_tokens=tokens, seq_len=cfg.seq_len, eval_s=secs)
        result = {"method": method, "rates": rates, "search_ppl": search_ppl, "final_ppl": final_ppl,
                  "final_tokens": tokens, "session_id": sid}
        store.add_result("baseline", method, result)
        store.update_session(status="finished", best_candidate=cid, best_fitness=search_ppl, final_ppl=final_ppl)
        outcome = "finished"
    except BaseException as e:
        store.mark_failed(e)
        outcome = "failed" if isinstance(e, Exception) else "aborted"
        raise
    finally:
        lock.release(outcome)
        store.close()
    return result
