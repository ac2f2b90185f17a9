"""``python -m diffprune.analysis <verb>``: collect | tables | figures | readme (see each verb's --help).

Exit status 0 when every output that the run set has data for was written; 1 with a message
naming what is missing otherwise (an empty run set, a missing column)."""
from __future__ import annotations

import argparse
import logging
import sys

from diffprune.analysis.runset import AnalysisError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffprune.analysis", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    collect = verbs.add_parser("collect", help="runs/ tree -> summary.csv (+ layers.csv)")
    collect.add_argument("--runs", required=True, help="results/<name>/runs")
    collect.add_argument("--out", required=True, help="summary CSV to write, e.g. results/<name>/summary.csv")
    collect.add_argument("--layers-out", help="per-layer CSV to write (default: layers.csv beside --out)")
    collect.add_argument("--only", nargs="+", metavar="RUN_DIR",
                         help="collect exactly these run directories (the workflow passes the runs its config "
                              "expands to); finished runs under --runs that are not listed are named and left out")

    for verb, what in (("tables", "the claims table (CSV, Markdown) and tables 1-5 as CSV, Markdown and LaTeX"),
                       ("figures", "figures 1-3 and weight distance as PNG, PDF (+ CSV of the plotted data)")):
        sub = verbs.add_parser(verb, help=what)
        sub.add_argument("--summary", required=True, help="summary.csv from `collect`")
        sub.add_argument("--layers", help="layers.csv from `collect` (without it the per-layer figures skip "
                                          "and claims 7-8 are not testable)")
        sub.add_argument("--out-dir", required=True, help=f"results/<name>/{verb}")

    readme = verbs.add_parser("readme", help="results/<name>/README.md: the claims table first, then every "
                                             "table and figure")
    readme.add_argument("--dir", required=True, help="results/<name> (holding summary.csv, tables/, figures/)")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="analysis: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "collect":
            from diffprune.analysis.collect import write_collection
            summary, layers = write_collection(args.runs, args.out, args.layers_out, args.only)
            logging.info("wrote %s and %s", summary, layers)
        elif args.verb == "tables":
            from diffprune.analysis.report import make_tables
            make_tables(args.summary, args.layers, args.out_dir)
        elif args.verb == "figures":
            from diffprune.analysis.report import make_figures
            make_figures(args.summary, args.layers, args.out_dir)
        elif args.verb == "readme":
            from diffprune.analysis.report import write_readme
            logging.info("wrote %s", write_readme(args.dir))
    except AnalysisError as error:
        print(f"analysis {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
