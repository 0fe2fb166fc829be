"""selfpruner: LLM-driven evolutionary pruning of LLMs."""
