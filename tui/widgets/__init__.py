"""Widgets of the run screen: population table, fitness sparklines, rate bars, call log, scrubber."""
