"""export, eval, speed and lora: what comes after a search."""
from __future__ import annotations

import json

from rich.table import Table

from selfpruner.core.errors import UserError

from .common import ProgressRenderer, _typed_placement, out


def cmd_export(args) -> int:
    from selfpruner.core.results.session_export import export_session_candidate

    with ProgressRenderer():
        where = _typed_placement(args)
        info = export_session_candidate(args.session, args.out, sessions_dir=args.sessions_dir,
                                        candidate=args.candidate, dtype=args.dtype, overwrite=args.overwrite,
                                        device=args.device if {"device", "device_map"} & set(where) else None,
                                        device_map=args.device_map)
    out.print(f"exported candidate #{info['candidate']} of {info['session']} to {info['out_dir']}: "
              f"{info['params']:,} parameters (dense {info['dense_params']:,}), prunable sparsity "
              f"{info['achieved_sparsity']:.4f}")
    out.print("load it with: import selfpruner.core.results.export; AutoModelForCausalLM.from_pretrained(DIR) "
              "(or trust_remote_code=True without selfpruner)")
    return 0


def cmd_eval(args) -> int:
    from selfpruner.core.results.lm_eval_bridge import PAPER_TASKS, TaskUnavailable, evaluate_dir
    from selfpruner.core.results.session_summary import record_for_model_dir

    tasks = args.tasks.split(",") if args.tasks else list(PAPER_TASKS)
    try:
        res = evaluate_dir(args.model_dir, tasks, limit=args.limit, batch_size=args.batch_size or _auto_batch(args),
                           num_fewshot=args.num_fewshot, include_path=args.include_path, device=args.device,
                           dtype=args.dtype, device_map=args.device_map)
    except TaskUnavailable as e:
        raise UserError(str(e)) from None
    t = Table("task", "metric", "value")
    for task, metrics in res.items():
        for m, v in metrics.items():
            t.add_row(task, m, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)
    payload = {"model_dir": str(args.model_dir), "tasks": tasks, "limit": args.limit,
               "num_fewshot": args.num_fewshot, "results": res}
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "lm_eval", ",".join(tasks), payload)
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def cmd_speed(args) -> int:
    import torch

    from selfpruner.core.model.models import load_model
    from selfpruner.core.results.export import load_pruned
    from selfpruner.core.results.session_summary import record_for_model_dir
    from selfpruner.core.results.speed import benchmark_vllm, compare, to_markdown, vllm_status

    if args.threads:
        torch.set_num_threads(args.threads)
    dense = load_model(args.dense, device=args.device, dtype=args.dtype, device_map=args.device_map).model
    pruned, _ = load_pruned(args.model_dir, dtype=args.dtype, device=args.device, device_map=args.device_map)
    report = compare({"dense": dense, "pruned": pruned}, baseline="dense", repeats=args.repeats,
                     clock=args.clock, prefill_len=args.prefill_len, decode_tokens=args.decode_tokens,
                     batch=args.batch_size or 1)
    out.print(to_markdown(report))
    if args.vllm:
        ok, why = vllm_status()
        if not ok:
            raise UserError(why)
        report["vllm"] = benchmark_vllm(args.model_dir)
        out.print_json(json.dumps(report["vllm"], default=str))
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "speed", str(args.model_dir),
                             json.loads(json.dumps(report, default=str)))
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def cmd_lora(args) -> int:
    from selfpruner.core.results.lora import recover_dir
    from selfpruner.core.results.session_summary import record_for_model_dir

    res = recover_dir(args.model_dir, args.out, steps=args.steps, seq_len=args.seq_len, lr=args.lr,
                      device=args.device, dtype=args.dtype, device_map=args.device_map, batch_size=args.batch_size or 1)
    out.print(f"LoRA r=8, {res.steps} steps: ppl {res.ppl_before:.3f} → {res.ppl_after:.3f}; saved to {args.out}")
    record_for_model_dir(args.model_dir, args.sessions_dir, "lora", str(args.out), res.to_dict())
    return 0

def _auto_batch(args):
    """lm-eval's batch size for --batch-size auto: its own search on a GPU, one sequence on the CPU."""
    import torch
    return "auto" if args.device != "cpu" and (args.device_map or torch.cuda.is_available()) else 1
