"""Self-Pruner: the search of layer-wise pruning rates (Algorithm 1), racing, the evaluator interface with the
resident workbench (in process or on Ray) and session start/resume. Imports model, proposers and core's top level
(map: core/__init__.py)."""
