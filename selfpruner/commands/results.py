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
                                        device_map=args.device_map, fmt=args.format, outtype=args.outtype,
                                        align=args.align)
    if info["format"] == "gguf":
        _print_gguf(info)
        return 0
    out.print(f"exported candidate #{info['candidate']} of {info['session']} to {info['out_dir']}: "
              f"{info['params']:,} parameters (dense {info['dense_params']:,}), prunable sparsity "
              f"{info['achieved_sparsity']:.4f}")
    out.print("load it with: import selfpruner.core.results.export; AutoModelForCausalLM.from_pretrained(DIR) "
              "(or trust_remote_code=True without selfpruner)")
    return 0


def _print_gguf(info: dict) -> None:
    out.print(f"exported candidate #{info['candidate']} of {info['session']} to {info['path']} ({info['outtype']}, "
              f"{info['file_bytes'] / 2**20:.1f} MiB): {info['params']:,} parameters (dense {info['dense_params']:,}), "
              f"prunable sparsity {info['achieved_sparsity']:.4f}")
    notes = []
    if info["padded_channels"]:
        notes.append(f"{info['padded_channels']} zero MLP channels added (widths to multiples of {info.get('align', 1)}, "
                     f"empty MLPs, Q8_0 blocks; the output is unchanged; --channel-multiple 64 in the search avoids "
                     f"them)")
    if info.get("unaligned_layers"):
        notes.append(f"{info['unaligned_layers']} layers' MLP widths are not multiples of 64: llama.cpp ran such "
                     f"widths' prompts down to 0.72x dense and generation at 1.00x on SmolLM2 where aligned widths gave "
                     f"1.2-1.3x (--align 64, the default; bench/RESULTS.md)")
    if info["kept_bias_groups"]:
        notes.append(f"{info['kept_bias_groups']} removed attention blocks keep one zero KV group (to carry their "
                     f"compensation bias, or in layer 0, where llama.cpp needs heads)")
    if info["unquantized"]:
        notes.append(f"{len(info['unquantized'])} tensors stay F16 (rows not a multiple of 32)")
    for n in notes:
        out.print("note: " + n)
    out.print(f"run it: llama-cli -m {info['path']}  |  llama-server -m {info['path']}  |  "
              f"ollama create NAME -f {info['modelfile']}")


def cmd_eval(args) -> int:
    from selfpruner.core.results.lm_eval_bridge import PAPER_TASKS, TaskUnavailable, evaluate_dir, resolve_tasks
    from selfpruner.core.results.session_summary import record_for_model_dir

    tasks = args.tasks.split(",") if args.tasks else list(PAPER_TASKS)
    try:
        res = evaluate_dir(args.model_dir, resolve_tasks(tasks, args.data_dir), limit=args.limit,
                           batch_size=args.batch_size or _auto_batch(args),
                           num_fewshot=args.num_fewshot, include_path=args.include_path, device=args.device,
                           dtype=args.dtype, device_map=args.device_map, engine=args.engine)
    except TaskUnavailable as e:
        raise UserError(str(e)) from None
    t = Table("task", "metric", "value")
    for task, metrics in res.items():
        for m, v in metrics.items():
            t.add_row(task, m, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)
    payload = {"model_dir": str(args.model_dir), "tasks": tasks, "data_dir": args.data_dir, "limit": args.limit,
               "num_fewshot": args.num_fewshot, "results": res}
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "lm_eval", ",".join(tasks), payload)
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def cmd_speed(args) -> int:
    import torch

    from selfpruner.core.model.models import load_model
    from selfpruner.core.results.export import load_any
    from selfpruner.core.results.session_summary import record_for_model_dir
    from selfpruner.core.results.speed import compare, to_markdown

    engine = args.engine or ("llama-cpp" if str(args.model_dir).endswith(".gguf") else "transformers")
    if engine == "llama-cpp":
        return _speed_gguf(args)
    if engine == "vllm":
        return _speed_vllm(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dense = load_model(args.dense, device=args.device, dtype=args.dtype, device_map=args.device_map).model
    pruned, _ = load_any(args.model_dir, dtype=args.dtype, device=args.device, device_map=args.device_map)
    report = compare({"dense": dense, "pruned": pruned}, baseline="dense", repeats=args.repeats,
                     clock=args.clock, prefill_len=args.prefill_len, decode_tokens=args.decode_tokens,
                     batch=args.batch_size or 1)
    out.print(to_markdown(report))
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "speed", str(args.model_dir),
                             json.loads(json.dumps(report, default=str)))
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def _speed_gguf(args) -> int:
    """The GGUF file against a dense GGUF on llama.cpp; a dense model name is written as GGUF first, in the
    pruned file's type, so both sides run the same kernels."""
    from selfpruner.core.results.gguf_speed import compare_gguf, dense_gguf, gguf_markdown
    from selfpruner.core.results.session_summary import record_for_model_dir

    if not str(args.model_dir).endswith(".gguf"):
        raise UserError(f"--engine llama-cpp runs GGUF files; export one with --format gguf (got {args.model_dir})")
    dense = dense_gguf(args.dense, like=args.model_dir)
    report = compare_gguf({"dense": dense, "pruned": args.model_dir}, baseline="dense", threads=args.threads,
                          repeats=args.repeats, prompt_len=args.prefill_len, decode_tokens=args.decode_tokens)
    out.print(gguf_markdown(report))
    q = report["ratios"]["pruned"]
    _beside_prediction(args, "llama-cpp", report, q["prompt"], q["gen"])
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "speed", str(args.model_dir), report)
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def _speed_vllm(args) -> int:
    """The export against its dense model on vLLM (the paper's measurement): both engines in this process, taking
    turns in every round."""
    from selfpruner.core.results.session_summary import record_for_model_dir
    from selfpruner.core.results.vllm_speed import compare_vllm, vllm_markdown

    report = compare_vllm(args.model_dir, args.dense, batch=args.batch_size or 16, prompt_len=args.prefill_len,
                          gen_tokens=args.decode_tokens, rounds=args.repeats, dtype=args.dtype)
    if not args.json:
        out.print(vllm_markdown(report))
    q = report["ratios"]
    _beside_prediction(args, "vllm", report, q["prefill_tok_s"], q["gen_tok_s"], quiet=args.json)
    if args.json:
        print(json.dumps(report))
    sid = record_for_model_dir(args.model_dir, args.sessions_dir, "speed", str(args.model_dir), report)
    if sid:
        out.print(f"stored in session {sid}")
    return 0


def _beside_prediction(args, engine: str, report: dict, prompt: float, gen: float, quiet: bool = False) -> None:
    """An export of a --target-speedup session: its cost table's prediction beside the measurement, stored too."""
    from selfpruner.core.results.session_summary import predicted_speedups
    predicted = predicted_speedups(args.model_dir, args.sessions_dir, engine)
    if not predicted:
        return
    report["predicted"] = predicted
    if not quiet:
        out.print(f"the session's cost table predicted prompt {predicted['prompt']:.2f}x, generation "
                  f"{predicted['generation']:.2f}x (measured {prompt:.2f}x, {gen:.2f}x)")


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
