"""Peak memory of a search against the model's own size: no per-candidate copies.

Samples the process RSS every 20 ms while a small search runs on the resident model (numeric GA by default;
with --proposer llama-cpp the GGUF proposer loads during the search and counts too), and prints
(peak RSS during the search − RSS before it) / (model weight bytes), measured after one warm-up evaluation
whose one-time page-in is reported apart, and how much the RSS grew from the first evaluation to the
last. A per-candidate deep copy would add >= 1.0 per candidate in flight and grow with copies kept; the
prefix-view pruning should add only activations and one slice of logits with its log-softmax.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time

import torch

from selfpruner.core.config import SearchConfig
from selfpruner.core.events import CandidateEvaluated, Control, EventBus
from selfpruner.core.layer_search.session import start_search
from selfpruner.core.layer_search.workbench import Workbench
from selfpruner.core.model.evaluate import HEAD_CHUNK

from bench_args import add  # bench/ is on sys.path when run as a script


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._done = 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(ap, model=None, ratio=0.3, budget_tokens=512, seq_len=512, calib_tokens=8192, K=4, N=2)
    ap.add_argument("--proposer", default="numeric", help="llama-cpp adds the GGUF proposer's own memory")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bench = Workbench.build(args.model, seq_len=args.seq_len, calib_tokens=args.calib_tokens, data="local")
    model_bytes = sum(p.numel() * p.element_size() for p in bench.lm.model.parameters())
    loaded = rss_bytes()
    # The first LM-head pass pages in the memory-mapped (cached, dequantised) tied embedding: file-backed
    # RSS, paid once by any use of the model, so it is reported apart from what each candidate costs.
    bench.fitness([args.ratio] * bench.lm.arch.n_layers, args.budget_tokens)
    warm = rss_bytes()
    after_eval: list[int] = []
    with tempfile.TemporaryDirectory() as d:
        cfg = SearchConfig(model=args.model, beta=args.ratio, proposer=args.proposer, population=args.K, mutations=2,
                           crossovers=2, generations=args.N, budget_tokens=args.budget_tokens,
                           seq_len=args.seq_len, final_eval=False, sessions_dir=d)
        bus = EventBus()
        bus.subscribe(lambda ev: after_eval.append(rss_bytes()) if isinstance(ev, CandidateEvaluated) else None)
        search = start_search(cfg, bus=bus, control=Control(), bench=bench)
        before = rss_bytes()
        sampler = PeakSampler()
        sampler.start()
        res = search.run()
        peak = sampler.stop()
        n_evals = len(search.store.evaluations())
    gib = 1024 ** 3
    logits = min(args.seq_len, HEAD_CHUNK) * bench.lm.model.config.get_text_config().vocab_size * 4
    print(f"model {bench.lm.name}: weights {model_bytes / gib:.3f} GiB; {n_evals} candidates evaluated "
          f"({res.status}, proposer {args.proposer})")
    print(f"RSS: model loaded {loaded / gib:.3f} GiB; after a warm-up evaluation {warm / gib:.3f} GiB (one-time); "
          f"before search {before / gib:.3f} GiB; peak during search {peak / gib:.3f} GiB")
    print(f"RSS after the 1st / last evaluation: {after_eval[0] / gib:.3f} / {after_eval[-1] / gib:.3f} GiB; "
          f"one LM-head slice of fp32 logits and its log-softmax: 2 x {logits / gib:.3f} GiB")
    print(f"(peak - before) / model bytes = {(peak - before) / model_bytes:.3f}   "
          f"(a copy per candidate would be >= 1.0)")
    print(f"(last - first evaluation) / model bytes = {(after_eval[-1] - after_eval[0]) / model_bytes:.3f}   "
          f"(growth over the search)")
    print(f"peak / model bytes = {peak / model_bytes:.3f}")


if __name__ == "__main__":
    main()
