"""`nmgen` command line: one sub-command per file; bad input ends in one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import re
import sys

from ..errors import NMGenError

COMMANDS = ("ptx", "check", "search", "db", "bench", "fuzz")


# a negative shape or pattern (-64x64x64, -1:32): argparse would take it for an option and say only
# "expected one argument"; as a value it reaches nmgen's own check, which says what is wrong with it
_NEGATIVE_VALUE = re.compile(r"-\d+[x:][-\dx:]*")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _parse_optional(self, arg_string):
        if _NEGATIVE_VALUE.fullmatch(arg_string):
            return None                     # a value, not an option
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    import importlib
    p = _Parser(prog="nmgen", description="Generate, check, tune and benchmark N:M-sparse SpMM GPU kernels "
                                          "(C = A @ B, B n:m sparse along K).")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"nmgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    p.subparser = lambda command: sub.choices[command]
    return p


def one_line(message: str) -> str:
    """An error message as one line: a list of reasons ("...:\n  - a\n  - b", as ir.validate
    writes them) becomes "...: a; b"."""
    lines = [x.strip() for x in message.strip().splitlines() if x.strip()]
    if len(lines) <= 1:
        return "".join(lines)
    reasons = [x[2:] if x.startswith("- ") else x for x in lines[1:]]
    return f"{lines[0].rstrip(':')}: {'; '.join(reasons)}"


def main(argv=None) -> int:
    from .common import refuse_existing_outputs
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):      # bare `nmgen`: the commands, not just "required"
        parser.print_help(sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:                 # reported by the command's own parser: "nmgen check: error: ..."
        parser.subparser(args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        refuse_existing_outputs(args)          # before any work: nothing the user has is replaced unasked
        code = int(args.run(args) or 0)
        sys.stdout.flush()                     # a write that fails (a full disk) fails here, not at exit
        return code
    except NMGenError as e:
        print(f"nmgen {args.command}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmgen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                    # `nmgen ... | head`: the reader has what it wanted
        _drop_stdout()
        return 0
    except OSError as e:                       # e.g. standard output on a full disk (/dev/full)
        _drop_stdout()
        where = f" ({e.filename})" if e.filename else ""
        print(f"nmgen {args.command}: error: writing or reading failed{where}: {e.strerror or e}", file=sys.stderr)
        return 1


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's flush at exit does not fail
    again (and print a traceback) on what is still buffered."""
    import os
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):             # stdout is no file (a test's capture): nothing to flush
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
