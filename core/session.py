"""Start or resume a layer-rate search session: the one entry point the CLI and the TUI share."""
from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, SearchConfig
from .events import Control, EventBus, SessionStarted
from .proposers.base import Proposer
from .search.self_pruner import SelfPrunerSearch
from .store import Store, StoreError, new_session_id, resolve_session
from .workbench import Workbench


def build_proposer(cfg: SearchConfig) -> Proposer:
    """Built before the model loads, so a missing key or file fails in a second, not after a minute."""
    if cfg.proposer == "replay":
        from .proposers.replay import ReplayProposer
        return ReplayProposer(Store(resolve_session(cfg.replay_from, cfg.sessions_dir)))
    from .proposers.registry import make_proposer
    opts = {"seed": cfg.seed, "max_retries": cfg.max_retries, "temperature": cfg.temperature}
    if cfg.proposer_model:
        opts["model"] = cfg.proposer_model
    if cfg.proposer == "llama-cpp" and cfg.llm_threads:
        opts["n_threads"] = cfg.llm_threads
    return make_proposer(cfg.proposer, **opts)


def build_init_proposer(cfg: SearchConfig) -> Proposer | None:
    if cfg.init != "random" or cfg.proposer == "replay":
        return None
    from .proposers.registry import make_proposer
    return make_proposer("random", seed=cfg.seed)


def resume_config(ref: str, sessions_dir: str = "sessions") -> tuple[SearchConfig, Path]:
    path = resolve_session(ref, sessions_dir)
    st = Store(path)
    try:
        s = st.session()
    finally:
        st.close()
    if s["kind"] != "layer":
        raise StoreError(f"session {s['id']} is a {s['kind']} search, not a layer-rate search")
    cfg = SearchConfig.from_dict(s["config"])
    cfg.sessions_dir = sessions_dir
    return cfg, path


def start_search(cfg: SearchConfig, *, bus: EventBus, control: Control, resume: Path | None = None,
                 bench: Workbench | None = None, init_proposer: Proposer | None = None) -> SelfPrunerSearch:
    """init_proposer overrides the config's, e.g. to start an ablation from another run's initial population."""
    cfg.validate()
    proposer = build_proposer(cfg)
    init_proposer = init_proposer or build_init_proposer(cfg)
    if bench is None:
        bench = Workbench.build(cfg.model, seq_len=cfg.seq_len, calib_tokens=cfg.calib_tokens, data=cfg.data,
                                bus=bus)
    if resume is not None:
        store = Store(resume)
        s = store.session()
        if s["model_fingerprint"] != bench.lm.fingerprint:
            raise ConfigError(f"session {s['id']} was run on another model ({s['model_name']})")
        store.update_session(status="running")
        sid = s["id"]
    else:
        sid = new_session_id("layer")
        store = Store(Path(cfg.sessions_dir) / f"{sid}.db", create=True)
        store.create_session(sid, "layer", cfg.to_dict(), model_name=bench.lm.name,
                             model_fingerprint=bench.lm.fingerprint, model_arch=json.dumps(bench.lm.arch.describe()),
                             data_source=bench.data.source, beta=cfg.beta, proposer=proposer.name)
    bus.emit(SessionStarted(sid, str(store.path), cfg.to_dict(), bench.lm.arch.n_layers, resume is not None))
    return SelfPrunerSearch(cfg, bench, store, proposer, bus, control, init_proposer)
