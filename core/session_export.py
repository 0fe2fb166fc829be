"""Export a stored session's candidate as the physically smaller model: the CLI's and the TUI's one path."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, SearchConfig
from .events import EventBus
from .export import export_pruned, load_pruned
from .session import session_workbench
from .speed import param_count, weight_bytes
from .store import Store, resolve_session


def export_session_candidate(session_ref: str, out: str | Path, *, sessions_dir: str = "sessions",
                             candidate: int | None = None, dtype: str | None = None, overwrite: bool = False,
                             bus: EventBus | None = None) -> dict:
    """Rebuild the session's workbench (its model, data source and calibration, checked against what it
    stored: the head/channel order depends on them), export `candidate` (default the best), record the
    export in the session and return what was recorded."""
    st = Store(resolve_session(session_ref, sessions_dir))
    try:
        s = st.session()
        cid = candidate if candidate is not None else s["best_candidate"]
        if cid is None:
            raise ConfigError(f"session {s['id']} has no evaluated candidate yet")
        rows = {c["id"]: c for c in st.candidates()}
        if cid not in rows:
            raise ConfigError(f"session {s['id']} has no candidate {cid}")
        cfg = SearchConfig.from_dict(s["config"])
        bench = session_workbench(cfg, s, bus)
        rates = rows[cid]["rates"]
        meta = {"session": s["id"], "candidate": cid, "search_ppl": st.fitness_by_candidate().get(cid),
                "final_ppl": s["final_ppl"], "model_spec": cfg.model, "seq_len": cfg.seq_len,
                "calib_tokens": cfg.calib_tokens, "data": bench.data.source, "calib_key": bench.calib_key,
                "bos_token": bench.data.bos}
        try:
            out_dir = export_pruned(bench.lm, bench.pruner, rates, out, meta=meta,
                                    dtype=getattr(torch, dtype) if dtype else None, overwrite=overwrite)
        except FileExistsError as e:
            raise ConfigError(str(e)) from None
        model, _ = load_pruned(out_dir)
        info = {"out_dir": str(out_dir), "candidate": cid, "rates": rates, "params": param_count(model),
                "dense_params": param_count(bench.lm.model), "weight_bytes": weight_bytes(model),
                "achieved_sparsity": model.config.selfpruner["achieved_sparsity"], "dtype": dtype or "float32",
                "session": s["id"]}
        st.add_result("export", str(out_dir), info)
        return info
    finally:
        st.close()
