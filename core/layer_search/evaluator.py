"""The one evaluator interface: Workbench (the resident model in this process), RayWorkbench (one resident
workbench per Ray worker) and Pruner-Zero's Workspace (candidates are metric trees at a sparsity) all are an
Evaluator, and the searches, the baselines and the benches score candidates only through these calls. The final
evaluation is written here, once."""
from __future__ import annotations

from typing import Callable

# A token budget larger than any test stream: "score the whole stream" (windows() stops at the stream's end).
WHOLE_STREAM = 10**12


class Evaluator:
    """Implemented by each evaluator (the metric search's Workspace: fitness and test_tokens):
        fitness(rates, budget_tokens, *, which, should_stop, progress, measure, kl_k) -> (value, seconds)
        evaluate_many(jobs, *, done, before, should_stop, progress)   (EvalJobs; done(job, value, seconds))
        test_tokens(max_tokens) -> int, dense_ppl(budget_tokens, which) -> float,
        reference_rates(beta, lo, hi) -> dict, set_pruning(reconstruct, channel_multiple, split, sequential),
        layer_grain() -> LayerGrain (what deduplication compares under those settings), pin_dtype(cfg), close()
    """

    def final_ppl(self, rates, final_tokens: int | None,
                  should_stop: Callable[[], bool] | None = None) -> tuple[float, float, int]:
        """(ppl, seconds, tokens scored) on `final_tokens` of the held-out test stream (None: all of it)."""
        ppl, secs = self.fitness(rates, final_tokens or WHOLE_STREAM, which="test", should_stop=should_stop)
        return ppl, secs, self.test_tokens(final_tokens)
