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
    "calibration",
    "bnn",
    "metanet",
    "report",
    "export",
    "inspect",
]


class _UsageError(Exception):
    """A command line argparse cannot parse: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``landscape VERB: error: MESSAGE (see landscape VERB --help)``.

    argparse's own error prints the usage block and the message (several lines); the
    usage is one ``--help`` away, and every bad input in this CLI is one line.
    """

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(self.prog, message)


def _one_line(text: str) -> str:
    """A message as one printable line: a file name may hold a newline or bytes that are not UTF-8."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    # a name in a file (a tensor key, a path) may hold a newline or another line break
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _available():
    for verb in VERBS:
        try:
            yield verb, importlib.import_module(f"analysis.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name != f"analysis.commands.{verb}":
                raise


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        prog, message = exc.args
        verb = next((a for a in argv if a in VERBS), None)
        if prog == parser.prog and verb:  # unknown options reach the top parser: name the verb
            prog = f"{prog} {verb}"
        print(_one_line(f"{prog}: error: {message} (see {prog} --help)"), file=sys.stderr)
        return 2
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    executors = sys.modules.get("landscape.distributed")
    running = executors.open_executors() if executors is not None else set()  # not this command's
    try:
        from .common import check_arguments

        check_arguments(args)  # names of files and folders, before any work
        return int(args._run(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(_one_line(f"landscape {args.verb}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"landscape {args.verb}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
    finally:
        executors = sys.modules.get("landscape.distributed")
        if executors is not None:  # the workers stop with the command, not at interpreter exit
            executors.close_all(keep=running)


if __name__ == "__main__":
    sys.exit(main())
