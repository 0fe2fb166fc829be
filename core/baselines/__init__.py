"""The one-shot peers a search is measured against: uniform, OWL and FLAP layer rates, evaluated and stored like a
searched candidate. Imports model, proposers, layer_search and core's top level (map: core/__init__.py)."""
