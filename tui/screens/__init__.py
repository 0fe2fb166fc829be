"""Screens: start form, live run, replay, session browser, Pruner-Zero metric view."""
