"""``mmke-eval report OUT1 OUT2 [--format md|latex|csv|json] [--by task|editor|model] [--plot DIR] [--ci]``:
paper-style tables (and figures) from results folders."""

from __future__ import annotations

import argparse
import sys

from mmke_eval.cli.inputs import bootstrap, bootstrap_options

DESCRIPTION = ("Paper-style tables (and figures) from results folders: mmke-eval's and plain lmms-eval ones. "
               "Runs of different models or data are never merged; protocol differences are shown above each table.")


def configure(parser: argparse.ArgumentParser) -> None:
    from mmke_eval.report import tables

    parser.add_argument("results", nargs="+", help="results folders (searched for *_results.json) or results files")
    parser.add_argument("--format", default="md", choices=tables.FORMATS,
                        help="md (default), latex (booktabs), csv (one line per number) or json (every table as data)")
    parser.add_argument("--by", default="task", choices=tables.BY,
                        help="one table per task (rows: editors; default), per editor (rows: tasks), or per model (rows: tasks x editors)")
    parser.add_argument("--plot", metavar="DIR", help="also write radar, bar and sequential-gap figures (PNG and PDF) into DIR")
    parser.add_argument("--ci", action="store_true",
                        help="give each benchmark cell its 95%% interval from a case-level bootstrap (needs the samples files)")
    bootstrap_options(parser)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval.report import runs, tables

    options = bootstrap(parser, args) if args.ci else None
    found, notes = runs.load_runs(args.results)
    for note in notes:
        print(f"mmke-eval report: note: {note}", file=sys.stderr)
    print(tables.render(tables.build_tables(found, args.by, ci=options), args.format), end="")
    if args.plot:
        from mmke_eval.report.plots import write_plots

        written = write_plots(found, args.plot)
        print(f"mmke-eval report: {len(written)} figure files in {args.plot}" if written else
              "mmke-eval report: no figure (figures need benchmark tasks)", file=sys.stderr)
        for path in written:
            print(f"  {path}", file=sys.stderr)
    return 0
