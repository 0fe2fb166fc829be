"""The CLI's command groups; selfpruner/cli.py builds the parser and dispatches to them."""
