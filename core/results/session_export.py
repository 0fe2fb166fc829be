"""Export a stored session's candidate as the physically smaller model: the CLI's and the TUI's one path."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ConfigError
from ..events import EventBus
from ..layer_search.session import session_workbench, stored_config
from ..session_files import resolve_session
from ..store import Store
from .export import build_pruned, export_pruned, saved_size
from .gguf_export import ALIGN, FORMATS, OUTTYPES, check_exportable, write_gguf, write_modelfile
from .speed import param_count


def export_format(out: str | Path, fmt: str | None) -> str:
    """hf or gguf: as asked, else by the output's name (FILE.gguf)."""
    fmt = fmt or ("gguf" if str(out).lower().endswith(".gguf") else "hf")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be {' or '.join(FORMATS)}, got {fmt!r}")
    return fmt


def export_session_candidate(session_ref: str, out: str | Path, *, sessions_dir: str = "sessions",
                             candidate: int | None = None, dtype: str | None = None, overwrite: bool = False,
                             bus: EventBus | None = None, device: str | None = None,
                             device_map: str | None = None, fmt: str | None = None, outtype: str = "f16",
                             align: int = ALIGN) -> dict:
    """Rebuild the session's workbench (its model in its dtype, data source and calibration, checked against
    what it stored: the head/channel order depends on them), export `candidate` (default the best), record
    the export in the session and return what was recorded. `fmt`: hf (a transformers directory) or gguf (one
    file for llama.cpp / Ollama, weights in `outtype`, with an Ollama Modelfile beside it); `dtype`: of the hf
    export's weights (None or 'auto': the session's); `device`/`device_map`: where to build it (None: where the
    session ran). A layer search and a baseline (uniform, OWL, FLAP: one stored candidate) export alike; a
    session that evaluated on Ray workers is rebuilt in this process."""
    fmt = export_format(out, fmt)
    if fmt == "gguf":
        if outtype not in OUTTYPES:
            raise ConfigError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
        if Path(out).exists() and not overwrite:
            raise ConfigError(f"{out} exists (pass --overwrite)")
    with Store(resolve_session(session_ref, sessions_dir)) as st:
        s = st.session()
        cid = candidate if candidate is not None else s["best_candidate"]
        if cid is None:
            raise ConfigError(f"session {s['id']} has no evaluated candidate yet")
        rows = {c["id"]: c for c in st.candidates()}
        if cid not in rows:
            raise ConfigError(f"session {s['id']} has no candidate {cid}")
        cfg = stored_config(s)
        # The export needs the model in this process, whatever cluster the session's evaluations ran on: a
        # Ray session (--workers / --ray-address) rebuilds here, not as a RayWorkbench whose model lives on actors.
        cfg.workers, cfg.ray_address = 0, None
        if device is not None:
            cfg.device, cfg.device_map = device, device_map
        bench = session_workbench(cfg, s, bus)
        if fmt == "gguf":
            check_exportable(bench.lm.model.config)  # refuse before the work
        dtype = None if dtype in (None, "auto") else dtype
        rates = rows[cid]["rates"]
        bench.prepare_final(rates)  # sequential calibration: the exported weights are the final evaluation's
        meta = {"session": s["id"], "candidate": cid, "search_ppl": st.fitness_by_candidate().get(cid),
                "final_ppl": s["final_ppl"], "model_spec": cfg.model, "seq_len": cfg.seq_len,
                "calib_tokens": cfg.calib_tokens, "data": bench.data.source, "calib_key": bench.calib_key,
                "bos_token": bench.data.bos}
        if fmt == "gguf":
            info = _export_gguf(bench, rates, out, meta, outtype, align) | {"candidate": cid, "rates": rates,
                                                                       "session": s["id"]}
            st.add_result("export", info["path"], info)
            return info
        try:
            out_dir = export_pruned(bench.lm, bench.pruner, rates, out, meta=meta,
                                    dtype=getattr(torch, dtype) if dtype else None, overwrite=overwrite)
        except FileExistsError as e:
            raise ConfigError(str(e)) from None
        params, nbytes = saved_size(out_dir)  # from the file headers: a 70B export is not loaded back
        record = json.loads((Path(out_dir) / "config.json").read_text())["selfpruner"]
        info = {"format": "hf", "out_dir": str(out_dir), "candidate": cid, "rates": rates, "params": params,
                "dense_params": param_count(bench.lm.model), "weight_bytes": nbytes,
                "achieved_sparsity": record["achieved_sparsity"], "dtype": dtype or cfg.dtype, "session": s["id"]}
        st.add_result("export", str(out_dir), info)
        return info


def _export_gguf(bench, rates, out, meta: dict, outtype: str, align: int = ALIGN) -> dict:
    """The pruned model as one GGUF (deci architecture) with an Ollama Modelfile beside it."""
    model = build_pruned(bench.lm, bench.pruner, rates, meta=meta, dtype=torch.float32, device="cpu")
    report = write_gguf(model, bench.lm.tokenizer, out, source_gguf=bench.lm.gguf_path, outtype=outtype,
                        name=f"{Path(out).stem}", align=align)
    modelfile = write_modelfile(report.path)
    record = model.config.selfpruner
    return {"format": "gguf", "path": report.path, "out_dir": report.path, "outtype": outtype,
            "params": param_count(model), "dense_params": param_count(bench.lm.model), "file_bytes": report.bytes,
            "achieved_sparsity": record["achieved_sparsity"], "modelfile": str(modelfile),
            "padded_channels": report.padded_channels, "align": align,
            "unaligned_layers": sum(c % ALIGN != 0 for c in report.channels), "kept_bias_groups": report.kept_bias_groups,
            "unquantized": report.unquantized, "tokenizer": report.tokenizer}
