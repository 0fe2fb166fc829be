"""Pruner-Zero: genetic programming over symbolic pruning metrics (trees over W, G, X; our own parser and
interpreter, never eval), unstructured pruning, prompts and sessions. Imports model, proposers and core's top level
(map: core/__init__.py)."""
