"""Speed, size and memory of GGUF files on the engine they are served with: llama.cpp (llama-cpp-python).

Per model: prompt processing (one batch of `prompt_len` tokens into an empty context) and generation (then
`decode_tokens` single-token steps, as a chat turn runs) in tokens/s; the file's bytes; resident memory (peak RSS
of a child process that loads the model and runs the same workload, less that of a child that loads nothing).
Timings are interleaved across models after one warm-up round, over `repeats` rounds; each figure is the median
with its min-max spread, and the thread count and load average at the start are reported beside them, since a
busy box moves every figure.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError


class GgufSpeedError(UserError):
    pass


def _llama(path: str | Path, threads: int, n_ctx: int):
    try:
        import llama_cpp
    except ImportError:
        raise GgufSpeedError("--engine llama-cpp needs llama-cpp-python (pip install llama-cpp-python)") from None
    if not Path(path).is_file():
        raise GgufSpeedError(f"GGUF file not found: {path}")
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_ctx,
                           verbose=False)


def _prompt(n_vocab: int, n: int, seed: int) -> list[int]:
    import random
    rnd = random.Random(seed)
    return [rnd.randrange(100, n_vocab) for _ in range(n)]  # ordinary tokens: low ids are specials


def _one_round(llm, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    """(prompt seconds, generation seconds) of one turn from an empty context."""
    llm.reset()  # the next eval drops the KV cache from position 0: every round starts cold, as a request does
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    tok = prompt[-1]
    for _ in range(decode_tokens):
        llm.eval([tok])
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    return t1 - t0, time.perf_counter() - t1


def _resident_bytes(path: str | None, threads: int, prompt_len: int, decode_tokens: int) -> int:
    """Peak RSS of a child that loads `path` (None: nothing) and runs one round (Linux)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report its parent's peak
    code = ("import sys\nimport llama_cpp\n"
            "p, t, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n"
            "if p:\n"
            "    m = llama_cpp.Llama(p, n_ctx=n + d + 8, n_threads=t, n_batch=n + d + 8, verbose=False)\n"
            "    m.eval([100 + i % 1000 for i in range(n)])\n"
            "    for i in range(d):\n"
            "        m.eval([101])\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, path or "", str(threads), str(prompt_len), str(decode_tokens)],
                       capture_output=True, text=True, timeout=600, check=False)
    if r.returncode:
        raise GgufSpeedError(f"measuring memory of {path} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(r.stdout.split()[-1])


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def compare_gguf(models: dict[str, str | Path], *, baseline: str | None = None, threads: int | None = None,
                 prompt_len: int = 128, decode_tokens: int = 32, repeats: int = 5, seed: int = 0,
                 memory: bool = True) -> dict:
    """Benchmark GGUF files with llama.cpp, interleaved; ratios against `baseline` (default the first)."""
    threads = threads or os.cpu_count() or 1
    load_avg = os.getloadavg()[0]
    names = list(models)
    baseline = baseline or names[0]
    llms = {n: _llama(p, threads, prompt_len + decode_tokens + 8) for n, p in models.items()}
    prompt = _prompt(min(m.n_vocab() for m in llms.values()), prompt_len, seed)
    times = {n: ([], []) for n in names}
    for rnd in range(repeats + 1):
        for n in names:
            pp, tg = _one_round(llms[n], prompt, decode_tokens)
            if rnd:  # round 0 warms up
                times[n][0].append(prompt_len / pp)
                times[n][1].append(decode_tokens / tg)
    results = {}
    base_rss = _resident_bytes(None, threads, prompt_len, decode_tokens) if memory else 0
    for n, p in models.items():
        results[n] = {"path": str(p), "file_bytes": Path(p).stat().st_size,
                      "prompt_tok_s": _spread(times[n][0]), "gen_tok_s": _spread(times[n][1])}
        if memory:
            results[n]["resident_bytes"] = _resident_bytes(str(p), threads, prompt_len, decode_tokens) - base_rss
    b = results[baseline]
    ratios = {n: {"file": r["file_bytes"] / b["file_bytes"],
                  "prompt": r["prompt_tok_s"]["median"] / b["prompt_tok_s"]["median"],
                  "gen": r["gen_tok_s"]["median"] / b["gen_tok_s"]["median"]}
              | ({"resident": r["resident_bytes"] / b["resident_bytes"]} if memory else {})
              for n, r in results.items()}
    env = {"engine": "llama.cpp (llama-cpp-python)", "threads": threads, "load_avg_1min": round(load_avg, 2),
           "prompt_len": prompt_len, "decode_tokens": decode_tokens, "repeats": repeats}
    try:
        import llama_cpp
        env["engine"] += f" {llama_cpp.__version__}"
    except ImportError:
        pass
    return {"baseline": baseline, "results": results, "ratios": ratios, "env": env}


def gguf_markdown(report: dict) -> str:
    rows = ["| model | file (MiB) | resident (MiB) | prompt tok/s (min-max) | gen tok/s (min-max) | prompt × | gen × |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for n, r in report["results"].items():
        q, pp, tg = report["ratios"][n], r["prompt_tok_s"], r["gen_tok_s"]
        res = f"{r['resident_bytes'] / 2**20:.0f}" if "resident_bytes" in r else "-"
        rows.append(f"| {n} | {r['file_bytes'] / 2**20:.1f} | {res} | "
                    f"{pp['median']:.0f} ({pp['min']:.0f}-{pp['max']:.0f})"
                    f" | {tg['median']:.1f} ({tg['min']:.1f}-{tg['max']:.1f}) | {q['prompt']:.2f} | {q['gen']:.2f} |")
    e = report["env"]
    return "\n".join(rows) + (f"\n\n{e['engine']}, {e['threads']} threads, load average {e['load_avg_1min']} at start; "
                              f"median of {e['repeats']} interleaved rounds of a {e['prompt_len']}-token prompt and "
                              f"{e['decode_tokens']} generated tokens; ratios vs {report['baseline']}.")


def dense_gguf(spec: str | None, *, like: str | Path) -> Path:
    """A dense GGUF to compare `like` with: `spec` itself when it is a .gguf, else the model named by `spec` written
    once (cached) as a deci GGUF in `like`'s weight type."""
    from ..model.models import cache_root, load_model
    from .gguf_export import gguf_outtype, write_gguf

    if spec and spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise GgufSpeedError(f"GGUF file not found: {spec}")
        return Path(spec)
    outtype = gguf_outtype(like)
    lm = load_model(spec, device="cpu", dtype="float32")
    key = lm.fingerprint[:12]
    path = cache_root() / "gguf-dense" / f"{Path(lm.name.split(' ')[0]).stem}-{key}-{outtype}.gguf"
    if not path.exists():
        write_gguf(lm.model, lm.tokenizer, path, source_gguf=lm.gguf_path, outtype=outtype)
    return path
