"""CLI options generated from the config's parts (core/config.py): each setting's flags, help, choices and
default are declared once, beside the field, and read back into SearchConfig fields by the same table.

What the user typed is known exactly, not guessed by comparing with defaults: a setting's argparse default is
SUPPRESS, so after parsing only typed options are in the namespace; SettingsParser records their names in
`args.typed` and then fills in the fields' defaults. So a resume or replay takes `--resume X -N 20` of a session
stored with -N 10, `--workers 0` or `--device auto` even where the value equals the parser's default."""
from __future__ import annotations

import argparse

from selfpruner.core.config import part_fields


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, its sub-parsers) that records which settings were typed."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        settings = [a for a in self._actions if hasattr(a, "setting_default")]
        ns.typed = frozenset(getattr(ns, "typed", ())) | {a.dest for a in settings if hasattr(ns, a.dest)}
        for a in settings:
            if not hasattr(ns, a.dest):
                setattr(ns, a.dest, a.setting_default)
        return ns, extras


def _batch(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, not {text!r}")
    return int(text)


# Settings whose value needs more than int/float/str from the command line.
PARSERS = {"batch_size": _batch}


def _kind(f) -> type:
    """int, float, str or bool from the field's annotation (a string under `from __future__ import annotations`)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {"int": int, "float": float, "bool": bool}.get(t.split(" |")[0], str)


def cli_fields(*parts, skip: tuple = (), only: tuple | None = None) -> list:
    """The parts' fields that are CLI options of their own (all but `skip`, or just `only`)."""
    return [f for f in part_fields(*parts) if f.metadata["flags"] is not None and f.name not in skip
            and (only is None or f.name in only)]


def add_settings(p, *parts, skip: tuple = (), only: tuple | None = None, choices: dict | None = None) -> None:
    """One option per setting of `parts`, dest = the field name; `choices` adds lists known elsewhere (the
    proposer registry)."""
    for f in cli_fields(*parts, skip=skip, only=only):
        m = f.metadata
        flags = m["flags"] or ("--" + f.name.replace("_", "-"),)
        kw = {"dest": f.name, "help": m["help"]}
        if _kind(f) is bool and f.default is None:  # --x / --no-x, unset = the config decides
            kw.update(action=argparse.BooleanOptionalAction)
        elif _kind(f) is bool:  # a switch: --x turns it on, --no-x off
            kw.update(action="store_false" if flags[-1].startswith("--no-") else "store_true")
        else:
            kw.update(type=PARSERS.get(f.name, _kind(f)), metavar=m["metavar"])
            allowed = (choices or {}).get(f.name) or m["choices"]
            if allowed:
                kw["choices"] = list(allowed)
        action = p.add_argument(*flags, default=argparse.SUPPRESS, **{k: v for k, v in kw.items() if v is not None})
        action.setting_default = f.default
        for alias, value in m.get("aliases", {}).items():  # e.g. --compensate = --reconstruct bias
            p.add_argument(alias, dest=f.name, action="store_const", const=value, default=argparse.SUPPRESS,
                           help=f"the same as {flags[0]} {value}")


def settings_from(args, *parts, skip: tuple = (), only: tuple | None = None) -> dict:
    """The values of add_settings' options, as SearchConfig fields."""
    return {f.name: getattr(args, f.name, f.default) for f in cli_fields(*parts, skip=skip, only=only)}


def typed_settings(args, *parts) -> dict:
    """The options the user typed, whatever their value (what a resume, replay or export may take over a
    session's)."""
    typed = getattr(args, "typed", frozenset())
    return {f.name: getattr(args, f.name) for f in cli_fields(*parts) if f.name in typed}
