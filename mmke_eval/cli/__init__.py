"""The ``mmke-eval`` command: subcommands registered on one parser (mmke_eval/cli/main.py); each
module of this package is one subcommand, thin over the library."""

from mmke_eval.cli.main import main

__all__ = ["main"]
