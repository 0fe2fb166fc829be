"""After a search: export of the physically smaller model, speed, zero-shot accuracy, LoRA recovery, reports and
session summaries. May import every other core package (map: core/__init__.py)."""
