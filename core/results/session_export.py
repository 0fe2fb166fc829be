"""Export a stored session's candidate as the physically smaller model: the CLI's and the TUI's one path."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ConfigError
from ..events import EventBus
from ..layer_search.session import session_workbench, stored_config
from ..store import Store, resolve_session
from .export import export_pruned, saved_size
from .speed import param_count


def export_session_candidate(session_ref: str, out: str | Path, *, sessions_dir: str = "sessions",
                             candidate: int | None = None, dtype: str | None = None, overwrite: bool = False,
                             bus: EventBus | None = None, device: str | None = None,
                             device_map: str | None = None) -> dict:
    """Rebuild the session's workbench (its model in its dtype, data source and calibration, checked against
    what it stored: the head/channel order depends on them), export `candidate` (default the best), record
    the export in the session and return what was recorded. `dtype`: of the saved weights (None or 'auto':
    the session's); `device`/`device_map`: where to build it (None: where the session ran)."""
    with Store(resolve_session(session_ref, sessions_dir)) as st:
        s = st.session()
        cid = candidate if candidate is not None else s["best_candidate"]
        if cid is None:
            raise ConfigError(f"session {s['id']} has no evaluated candidate yet")
        rows = {c["id"]: c for c in st.candidates()}
        if cid not in rows:
            raise ConfigError(f"session {s['id']} has no candidate {cid}")
        cfg = stored_config(s)
        if device is not None:
            cfg.device, cfg.device_map = device, device_map
        bench = session_workbench(cfg, s, bus)
        dtype = None if dtype in (None, "auto") else dtype
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
        params, nbytes = saved_size(out_dir)  # from the file headers: a 70B export is not loaded back
        record = json.loads((Path(out_dir) / "config.json").read_text())["selfpruner"]
        info = {"out_dir": str(out_dir), "candidate": cid, "rates": rates, "params": params,
                "dense_params": param_count(bench.lm.model), "weight_bytes": nbytes,
                "achieved_sparsity": record["achieved_sparsity"], "dtype": dtype or cfg.dtype, "session": s["id"]}
        st.add_result("export", str(out_dir), info)
        return info
