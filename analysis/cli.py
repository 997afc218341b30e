"""The ``landscape`` command line: ``landscape <verb> ROOT... --data SPEC -o results.h5``.

Every verb prints a compact table at the end, writes into the same results file, and
exits with status 2 and one line on bad input (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from landscape import __version__
from landscape.errors import UserError

#: verb -> module under analysis.commands (each defines HELP, EXAMPLE, add_arguments, run)
VERBS = [
    "train",
    "demo",
    "run",
    "interpolate",
    "align",
    "hessian",
    "surface",
    "symmetry",
    "report",
    "export",
    "inspect",
]


def _available():
    for verb in VERBS:
        try:
            yield verb, importlib.import_module(f"analysis.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name != f"analysis.commands.{verb}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss landscapes of standard and asymmetric networks: barriers, alignment, "
        "Hessian spectra, surfaces, symmetry audits and HTML reports.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, mod in _available():
        p = sub.add_parser(
            verb,
            help=mod.HELP,
            description=mod.HELP,
            epilog=f"example:\n  {mod.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"landscape {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"landscape {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
