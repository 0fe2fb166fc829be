"""The GPU check in one run (bench/gpu_check.sh runs it on a bare GPU image): a random llama-3-8b-shape model in
bf16 on one GPU; fitness at --seq-len tokens against a bare forward of the physically pruned model; the automatic
batch size; peak memory; a --evals-evaluation numeric search with racing; export to an HF directory and reload.

Every step prints one line and the script carries on after a failed step (the summary says which failed), so
one short device session gives every figure it can. On a CPU, `--shape tiny --device cpu` is a smoke run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from argparse import Namespace

import scale  # bench/ is on sys.path when run as a script
import torch

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.models import LoadedModel, resolve_device, resolve_dtype

from bench_args import add

GiB = 2**30


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(scale.SHAPES), default="llama-3-8b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    add(ap, ratio=0.3, seq_len=2048, repeats=3, seed=0)
    ap.add_argument("--evals", type=int, default=20, help="evaluations of the search (K + N·(M+S))")
    ap.add_argument("--race", default=None, help="racing stages (default: one window for all, then the best 2 on two)")
    args = ap.parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype, resolve_device(args.device))
    failed, t_start = [], time.perf_counter()

    def out(line):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {line}", flush=True)

    def step(name, fn):
        try:
            return fn()
        except Exception as e:  # one failed step must not cost the others
            failed.append(name)
            out(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            traceback.print_exc(limit=3)
            return None

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    out(f"gpu_check: {args.shape} ({args.layers or 'all'} layers), {str(dtype)[6:]} on {device} ({gpu}); torch "
        f"{torch.__version__}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = scale.build_random(args.shape, args.layers, dtype, device, args.seed)
    lm = LoadedModel.wrap(model, f"random {args.shape}")
    out(f"built      {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")
    seq = args.seq_len
    td = scale.random_tokens(model.config.vocab_size, 4 * seq, 4 * seq, 2 * seq, args.seed)
    t0 = time.perf_counter()
    bench = Workbench.from_parts(lm, td, seq_len=seq, batch_size=None)  # None: the automatic batch size
    out(f"calibrate  {4 * seq} tokens in {time.perf_counter() - t0:.1f} s; automatic batch size {bench.batch_size}")
    rates = scale.rates_for(lm.arch.n_layers, args.ratio)
    windows = bench.windows("search", seq)
    physical_args = Namespace(repeats=args.repeats, budget_tokens=seq, seq_len=seq)
    step("physical", lambda: scale.physical(physical_args, bench, rates, windows, out, f"{lm.arch.n_layers} layers"))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        wbytes = scale.weight_bytes(model)
        out(f"memory     max_memory_allocated {peak / GiB:.2f} GiB = {peak / wbytes:.3f} x the weights "
            f"({wbytes / GiB:.2f} GiB)")

    def search():
        k = max(2, args.evals // 3)
        n = max(1, (args.evals - k) // 4)  # M = S = 2
        race = args.race or f"{seq}:all,{2 * seq}:2"
        cfg = SearchConfig(beta=args.ratio, proposer="numeric", population=k, mutations=2, crossovers=2,
                           generations=n, seq_len=seq, budget_tokens=2 * seq, race=race, final_tokens=2 * seq,
                           sessions_dir=tempfile.mkdtemp(prefix="gpu-check-"), seed=args.seed)
        t0 = time.perf_counter()
        s = start_search(cfg, bus=EventBus(), control=Control(), bench=bench)
        res = s.run()
        evals = sum(1 for e in s.store.evaluations() if e["kind"] == "search" and not e["cached"])
        out(f"search     K={k} M=2 S=2 N={n}, race {race}: {evals} evaluations in {time.perf_counter() - t0:.1f} s, "
            f"best search ppl {res.best_fitness:.2f}, final ppl {res.final_ppl:.2f} ({2 * seq} test tokens)")
        return res.best_rates

    best = step("search", search) or rates

    def export_and_reload():
        from transformers import AutoModelForCausalLM

        from selfpruner.core.results.export import build_pruned, export_pruned
        t0 = time.perf_counter()
        d = export_pruned(lm, bench.pruner, best, tempfile.mkdtemp(prefix="gpu-check-export-"), overwrite=True)
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, device_map={"": device})
        t_load = time.perf_counter() - t0
        phys = build_pruned(lm, bench.pruner, best)
        ids = windows[:1, : min(seq, 256)].to(device)
        with torch.no_grad():
            diff = (back(input_ids=ids).logits.float() - phys(input_ids=ids).logits.float()).abs().max().item()
        out(f"export     saved in {t_save:.1f} s, reloaded on {device} in {t_load:.1f} s; max |logit diff| against "
            f"the in-memory pruned model {diff:.3g}")
        del back, phys

    step("export", export_and_reload)
    out(f"done in {time.perf_counter() - t_start:.1f} s; " + (f"FAILED steps: {', '.join(failed)}" if failed
                                                               else "every step ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
