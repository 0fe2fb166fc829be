"""Start or resume a layer-rate search session: the one entry point the CLI and the TUI share."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import RESUMABLE, ConfigError, SearchConfig, check_stored_base_url
from ..events import Control, EventBus, SessionStarted
from ..proposers.base import Proposer
from ..run_lock import RunLock, new_locked_session
from ..session_files import resolve_session
from ..store import Store, StoreError
from .self_pruner import SelfPrunerSearch
from .speed_budget import session_speed
from .workbench import Workbench


def build_proposer(cfg: SearchConfig) -> Proposer:
    """Built before the model loads, so a missing key or file fails in a second, not after a minute."""
    from ..proposers.registry import build_proposer as from_registry
    return from_registry(cfg)


def build_init_proposer(cfg: SearchConfig) -> Proposer | None:
    if cfg.init != "random" or cfg.proposer == "replay":
        return None
    from ..proposers.registry import make_proposer
    return make_proposer("random", seed=cfg.seed)


def stored_config(s: dict) -> SearchConfig:
    """A session's SearchConfig. Sessions from before devices existed all ran in float32 on the CPU."""
    d = dict(s["config"])
    d.setdefault("dtype", "float32")
    d.setdefault("seed_references", False)  # sessions from before references existed had none
    # settings whose default changed, at what sessions stored before them ran with (reconstruct: config.from_dict)
    d.setdefault("importance", "wanda-sp")
    d.setdefault("calib_tokens", 16384)
    return SearchConfig.from_dict(d)


def resume_config(ref: str, sessions_dir: str = "sessions", overrides: dict | None = None, *,
                  calls_proposer: bool = True) -> tuple[SearchConfig, Path]:
    """The stored config with `overrides` (settings the user gave explicitly) applied where they may change:
    a larger --generations extends a finished search. `calls_proposer`: the run will talk to the stored
    proposer (not a replay of its stored answers)."""
    path = resolve_session(ref, sessions_dir)
    with Store(path, readonly=True) as st:
        s = st.session()
    if s["kind"] != "layer":
        raise StoreError(f"session {s['id']} is a {s['kind']} search, not a layer-rate search")
    stored = stored_config(s)
    d = stored.to_dict()
    overrides = dict(overrides or {})
    if "device" in overrides:  # a device given on its own replaces the stored placement, device map included
        overrides.setdefault("device_map", None)
    for k, v in overrides.items():
        if k == "sessions_dir" or d.get(k) == v:
            continue
        if k == "dtype":
            raise ConfigError(f"--dtype cannot change when resuming session {s['id']}: it ran in {stored.dtype}, "
                              f"and {v} weights give other fitness values; start a new search instead")
        if k not in RESUMABLE:
            raise ConfigError(f"--{k.replace('_', '-')} cannot change when resuming session {s['id']} "
                              f"(stored {d.get(k)!r}, given {v!r}); start a new search instead")
        if k == "generations" and v < stored.generations:
            raise ConfigError(f"session {s['id']} has {stored.generations} generations; resume can only extend it")
        d[k] = v
    if calls_proposer and d.get("proposer") == "openai":
        check_stored_base_url(stored.base_url, overrides.get("base_url"), s["id"])
    cfg = SearchConfig.from_dict(d)
    cfg.sessions_dir = sessions_dir
    return cfg, path


def check_same_setup(s: dict, bench: Workbench) -> None:
    """A session continued, replayed or exported on another model, data or calibration would silently give
    another pruned model (the head/channel order comes from the calibration): refuse in one line."""
    if s["model_fingerprint"] != bench.lm.fingerprint:
        ran_in = stored_config(s).dtype if s.get("config") else None
        if ran_in not in (None, "auto", bench.dtype):
            raise ConfigError(f"session {s['id']} ran in {ran_in}, this run loaded {s['model_name']} in {bench.dtype}")
        raise ConfigError(f"session {s['id']} was run on another model ({s['model_name']})")
    if s.get("data_source") and s["data_source"] != bench.data.source:
        raise ConfigError(f"session {s['id']} used data {s['data_source']}, this run gets {bench.data.source} "
                          f"(pass --data local or run where the hub is reachable)")
    if s.get("calib_key") and s["calib_key"] != bench.calib_key:
        raise ConfigError(f"session {s['id']} was calibrated on other windows (key {s['calib_key']}, now "
                          f"{bench.calib_key}): check --seq-len, --calib-tokens and --bos")


def data_choice(s: dict, cfg_data: str) -> str:
    """The data source to rebuild a session's workbench with: where it was local, local again."""
    src = s.get("data_source") or ""
    return "local" if src.startswith("local:") else ("hub" if src.startswith("hub:") else cfg_data)


def new_workbench(cfg: SearchConfig, bus: EventBus | None = None, data: str | None = None) -> Workbench:
    """In this process, or (--workers/--ray-address) one per Ray worker behind a stand-in with the same calls."""
    if cfg.distributed:
        from .distributed import RayWorkbench
        return RayWorkbench(cfg, bus, data)
    return Workbench.from_config(cfg, bus, data)


def session_workbench(cfg: SearchConfig, s: dict, bus: EventBus | None = None) -> Workbench:
    """The workbench a stored session ran on, rebuilt from its config and checked against it."""
    import torch

    if not cfg.distributed and (cfg.device.startswith("cuda") or cfg.device_map) and not torch.cuda.is_available():
        where = cfg.device if cfg.device.startswith("cuda") else f"--device-map {cfg.device_map}"
        raise ConfigError(f"session {s['id']} ran on {where} and no CUDA device is visible here: pass --device cpu "
                          f"(or auto) to continue it on the CPU, in its stored dtype {cfg.dtype}")
    bench = new_workbench(cfg, bus, data_choice(s, cfg.data))
    try:
        check_same_setup(s, bench)
    except ConfigError:
        bench.close()
        raise
    return bench


def store_references(store: Store, bench: Workbench, cfg: SearchConfig, beta: float | None = None) -> None:
    """Uniform and OWL rates at the session's β (under --target-speedup the uniform rate that meets it), for
    reports to draw the searched profile against."""
    store.add_result("reference", "rates", bench.reference_rates(beta or cfg.beta, cfg.lo, cfg.hi))


def start_search(cfg: SearchConfig, *, bus: EventBus, control: Control, resume: Path | None = None,
                 bench: Workbench | None = None, init_proposer: Proposer | None = None,
                 command: str | None = None) -> SelfPrunerSearch:
    """init_proposer overrides the config's, e.g. to start an ablation from another run's initial population.
    The returned search holds the session's run lock (`command` says who, in the DB) until its run() ends; a
    session another live process runs is refused here, before any model loads."""
    cfg.validate()
    proposer = build_proposer(cfg)
    init_proposer = init_proposer or build_init_proposer(cfg)
    owns_bench = bench is None  # built here: the search releases it (Ray's workers) when it ends
    lock = None
    try:
        if resume is not None:
            store = Store(resume)
            lock = RunLock(store, command).acquire()
            s = store.session()
            if bench is None:
                bench = session_workbench(cfg, s, bus)
            check_same_setup(s, bench)
            store.update_session(status="running", config=cfg.to_dict())
            sid = s["id"]
        else:
            if bench is None:
                bench = new_workbench(cfg, bus)
            bench.pin_dtype(cfg)
            store, lock = new_locked_session(
                cfg.sessions_dir, "layer", cfg.to_dict(), command, model_name=bench.lm.name,
                model_fingerprint=bench.lm.fingerprint, model_arch=json.dumps(bench.lm.arch.describe()),
                data_source=bench.data.source, beta=cfg.beta, proposer=proposer.name, calib_key=bench.calib_key,
                bos_token=bench.data.bos)
            sid = store.session_id
        if bench.pruner.importance != cfg.importance:  # the importance fixed the model's head/channel order
            raise ConfigError(f"the workbench orders heads and channels by {bench.pruner.importance}, the search "
                              f"asks for --importance {cfg.importance}")
        bench.set_pruning(cfg.reconstruct, cfg.channel_multiple, cfg.split, cfg.sequential)
        speed = session_speed(cfg, store, bench, bus)
        search = SelfPrunerSearch(cfg, bench, store, proposer, bus, control, init_proposer, owns_bench=owns_bench,
                                  lock=lock, speed=speed)
        shown = cfg.to_dict()
        if speed is not None:  # the session's β is the uniform rate that meets the speed: what its rates centre on
            shown["beta"] = search.problem.beta
            store.update_session(beta=search.problem.beta)
        if resume is None:
            store_references(store, bench, cfg, search.problem.beta)
        bus.emit(SessionStarted(sid, str(store.path), shown, bench.lm.arch.n_layers, resume is not None))
        return search
    except BaseException as e:
        if lock is not None:
            if resume is None:  # a new session that never ran: not resumable, say why
                lock.store.mark_failed(e)
            lock.release("refused" if resume is not None else "failed")
        raise


def replay_session(ref: str, sessions_dir: str = "sessions", *, bus: EventBus, control: Control,
                   final_eval: bool = True, overrides: dict | None = None) -> tuple[SelfPrunerSearch, Path]:
    """A new session that re-runs a stored one from its stored replies (re-parsed and re-repaired) on the
    same model, data and calibration; compare_trajectories(source, search.store) tells whether it matched.
    `overrides`: what resume may change (device, batch size), e.g. to replay a GPU session on the CPU."""
    cfg, path = resume_config(ref, sessions_dir, overrides, calls_proposer=False)
    with Store(path, readonly=True) as src:
        s = src.session()
    cfg.proposer, cfg.replay_from, cfg.final_eval = "replay", str(path), final_eval
    bench = session_workbench(cfg, s, bus)
    return start_search(cfg, bus=bus, control=control, bench=bench), path
