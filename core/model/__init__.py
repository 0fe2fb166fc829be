"""A model as every stage sees it: loading, data windows, calibration statistics, importance scores, structured
pruning on one resident copy, perplexity and KL. Imports only core's top level (map: core/__init__.py)."""
