"""Arguments several commands share: the problem (--shape/--pattern/--vector/--a-major/--dtype/
--out-dtype) and --schedule, and the checks every path, file and number given on the command line
goes through, each ending in one line that says what was wrong, with the value, and what to do."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from ..errors import NMGenError, ScheduleError
from ..ir.problem import Pattern, Problem, parse_shape
from ..ir.schedule import Schedule


# ---- numbers (argparse `type=`: a bad value ends in `nmgen CMD: error: argument --X: ...`) ---------
def at_least(lo: int):
    """An argparse type: an integer >= lo."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be at least {lo}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


positive_int = at_least(1)


# ---- files -------------------------------------------------------------------------------------------
class OutputPath(str):
    """A file named on the command line for nmgen to write (what `output_file` returns): `main`
    refuses, before any work, one that already exists unless --force is given."""


def add_output_arg(p, *flags, **kwargs):
    """An option naming a file the command writes (type `output_file`), and --force, once per
    command, to let it replace a file that exists."""
    p.add_argument(*flags, type=output_file, **kwargs)
    if not any(a.dest == "force" for a in p._actions):
        p.add_argument("--force", action="store_true", help="replace output files that already exist")


def refuse_existing_outputs(args) -> None:
    """NMGenError, one line, for an output file (an OutputPath among `args`) that already exists,
    unless --force, or that another output (or --db) names too: nothing the user has is replaced
    without asking. A device or a pipe (/dev/null, /dev/stdout) is written through, not replaced,
    so it is not refused."""
    from ..db import default_path
    from ..files import is_device
    named = [(f"--{dest.replace('_', '-')}", value) for dest, value in vars(args).items()
             if isinstance(value, OutputPath) and not is_device(os.path.realpath(value))]
    for i, (flag, value) in enumerate(named):   # --force or not: one run writing a file twice keeps the last
        for other, path in named[i + 1:]:
            if same_file(value, path):
                raise NMGenError(f"{flag} and {other} both name {value}: the second would overwrite the first; "
                                 f"give each its own file")
        if hasattr(args, "db"):                 # a command that opens the tuning database
            not_the_database(flag, value, args.db or default_path())
    if getattr(args, "force", False):
        return
    for value in vars(args).values():
        if isinstance(value, OutputPath) and os.path.isfile(value):
            raise NMGenError(f"{value} already exists; pass --force to replace it, or give another file")


def not_the_database(flag: str, output, db_path) -> None:
    """NMGenError if `output` is the tuning database file (or its WAL, shared-memory or journal
    file): writing there would destroy the database the command reads."""
    for base in dict.fromkeys((str(db_path), os.path.realpath(db_path))):   # SQLite names its files after
        for suffix in ("", "-wal", "-shm", "-journal"):                      # a symlink's target
            if same_file(output, f"{base}{suffix}"):
                raise NMGenError(f"{flag} {output} is the tuning database itself ({base}{suffix}); write to another "
                                 f"file")


def output_file(text: str) -> OutputPath:
    """An argparse type: a file that can be written (not a directory, in a directory that exists
    and is writable), checked before any work is done (that it exists: `refuse_existing_outputs`)."""
    from ..files import why_not_writable
    if text == "-":     # a file literally named "-" is never what was meant
        raise argparse.ArgumentTypeError("'-' is not a file name: give one (ptx and db export print to standard "
                                         "output when -o is left out)")
    why = why_not_writable(text)
    if why:
        raise argparse.ArgumentTypeError(f"{text}: {why}" if text else why)
    return OutputPath(text)


@contextlib.contextmanager
def atomic_output(path: str, binary: bool = False):
    """A file opened for writing that replaces `path` only when the block ends without error: a
    failed or interrupted write leaves `path` as it was (files.new_version: a temporary file in the
    same directory, renamed over `path`; a device or pipe is written in place). OSError becomes
    NMGenError naming the file."""
    from ..files import is_device, new_version
    target = os.path.realpath(path)         # through a symlink, as open(path, "w") would write
    mode = "wb" if binary else "w"
    try:
        if is_device(target):
            with open(target, mode) as f:
                yield f
        else:
            with new_version(target) as tmp, open(tmp, mode) as f:
                yield f
    except NMGenError:            # (a FileError is an OSError too: its own message stands)
        raise
    except OSError as e:
        left = ("" if is_device(target) else "; it is left as it was" if os.path.exists(target)
                else "; nothing was written")
        raise NMGenError(f"cannot write {path} ({e.strerror or e}){left}") from None


def read_text(path: str, what: str) -> str:
    """The text of the file `path`, or of standard input for "-" (`what` names it in errors, e.g.
    "--shapes"); NMGenError, one line, for a missing, unreadable, binary or non-UTF-8 file, or a
    directory."""
    if path == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8-sig")      # -sig: a byte-order mark some editors write
        except UnicodeDecodeError as e:
            raise NMGenError(f"{what} on standard input is not UTF-8 text (byte {e.start}); give text") from None
        except (OSError, AttributeError, ValueError) as e:           # closed, or no standard input at all
            raise NMGenError(f"cannot read {what} from standard input ({e})") from None
        if "\x00" in text:
            raise NMGenError(f"{what} on standard input is not text (it holds NUL bytes); give text")
        return text
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except IsADirectoryError:
        raise NMGenError(f"{what} {path} is a directory; give a file") from None
    except FileNotFoundError:
        raise NMGenError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise NMGenError(f"{what} {path} is not a UTF-8 text file (byte {e.start}); give a text file") from None
    except OSError as e:
        raise NMGenError(f"cannot read {what} {path} ({e.strerror or e})") from None
    if "\x00" in text:
        raise NMGenError(f"{what} {path} is not a text file (it holds NUL bytes); give a text file")
    return text


def same_file(a, b) -> bool:
    """Whether paths a and b name one file (the same inode where both exist, else the same real path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


# ---- dtypes --------------------------------------------------------------------------------------
# --dtype on the command line (the names torch users know) -> nmgen's (ir.dtypes); nmgen's own and
# numpy's spellings are taken too
DTYPE_OPTIONS = {"fp32": "f32", "tf32": "tf32", "bf16": "bf16", "fp16": "f16"}


def option_name(dtype: str) -> str:
    """The command line's name of nmgen's dtype `dtype` (f32 -> fp32, f16 -> fp16)."""
    return {v: k for k, v in DTYPE_OPTIONS.items()}[dtype]


def dtype_arg(text: str) -> str:
    """An argparse type: A's and B's dtype, as nmgen names it (f32, tf32, bf16, f16)."""
    from ..ir.dtypes import ALIASES
    name = ALIASES.get(text.strip().lower())
    if name is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dtype; choose fp32 (FFMA), tf32, bf16 or fp16 "
                                         f"(tensor cores)")
    return name


dtype_arg.__name__ = "dtype"


def out_dtype_arg(text: str) -> str:
    """An argparse type: C's dtype, as nmgen names it (f32, bf16, f16)."""
    name = dtype_arg(text)
    if name == "tf32":
        raise argparse.ArgumentTypeError("tf32 is a way of multiplying float32, not a storage type: C is fp32, "
                                         "bf16 or fp16")
    return name


out_dtype_arg.__name__ = "output dtype"


def add_dtype_arg(p, out: bool = False):
    """--dtype (and with `out`, --out-dtype)."""
    p.add_argument("--dtype", type=dtype_arg, default="f32", metavar="{fp32,tf32,bf16,fp16}",
                   help="what A and B hold and how they multiply: fp32 on the CUDA cores (FFMA, default); tf32 "
                        "(float32 operands rounded to TF32), bf16 or fp16 on the tensor cores (needs --vector "
                        "a multiple of 8); products accumulate in fp32")
    if out:
        p.add_argument("--out-dtype", type=out_dtype_arg, default=None, metavar="{fp32,bf16,fp16}",
                       help="what C holds (default A's: fp32 for fp32 and tf32, else --dtype)")


def check_tensor_core_vector(dtype: str, vector: int) -> None:
    """NMGenError, one line, for a tensor-core dtype with a V no 8-column mma tile fits inside."""
    from ..ir.dtypes import dtype as dtype_of
    if dtype_of(dtype).compute == "mma" and vector % 8:
        raise NMGenError(f"--dtype {option_name(dtype)} multiplies on the tensor cores, whose 8-column mma tiles "
                         f"must each lie inside one vector of columns sharing kept rows: V={vector} is no multiple "
                         f"of 8; use --vector 8, 16, 32, ... or --dtype fp32 (the FFMA path) for V={vector}")


# ---- the problem ---------------------------------------------------------------------------------
def add_problem_args(p, required=True):
    p.add_argument("--shape", required=required, metavar="MxNxK", help="C is MxN, A is MxK, B is KxN (e.g. 4096x4096x4096)")
    p.add_argument("--pattern", required=required, metavar="n:m",
                   help="n of every m rows of B kept along K (e.g. 8:32; or 8:32x32 with its vector length, as "
                        "nmgen prints problems)")
    p.add_argument("--vector", type=int, metavar="V",
                   help="consecutive columns sharing one choice of rows (default 1: element-wise n:m, or the V of "
                        "--pattern n:mxV)")
    p.add_argument("--a-major", choices=("row", "col"), default="row",
                   help="A's memory order: row-major M x K (default) or column-major (K x M in memory)")
    add_dtype_arg(p, out=True)


def problem_from(args) -> Problem:
    M, N, K = parse_shape(args.shape)
    pattern = Pattern.parse(args.pattern, args.vector)
    check_tensor_core_vector(args.dtype, pattern.vector)
    return Problem(M, N, K, pattern, args.dtype, args.a_major, args.out_dtype)


def add_schedule_arg(p):
    from dataclasses import fields
    names = ", ".join(f.name for f in fields(Schedule))
    p.add_argument("--schedule", metavar="JSON", help="schedule as JSON (or a file holding it); fields left out "
                                                    "take the values of the shape's heuristic default schedule "
                                                    "(not the tuned or model-ranked one a run without --schedule "
                                                    "gets): give every field to pin one, as search's reproduce "
                                                    f"lines do. Fields (nmgen.Schedule's docstring says what each "
                                                    f"means): {names}")


def _looks_like_a_path(text: str) -> bool:
    t = text.strip()
    return not t.startswith("{") and (t.endswith(".json") or "/" in t or os.sep in t)


def schedule_from(args, problem: Problem, device) -> Schedule | None:
    if getattr(args, "schedule", None) is None:
        return None
    if not args.schedule.strip():
        raise ScheduleError("--schedule is empty: give a JSON object of schedule fields (e.g. '{\"split_k\": 2}') "
                            "or a file holding one, or leave it out for the tuned or model-ranked choice")
    text = args.schedule
    if os.path.isfile(text) or os.path.isdir(text) or _looks_like_a_path(text):
        text = read_text(args.schedule, "--schedule")
    try:
        given = json.loads(text, object_pairs_hook=Schedule.unique_fields)
    except json.JSONDecodeError as e:
        where = f"{args.schedule} " if text is not args.schedule else ""
        raise ScheduleError(f"--schedule {where}is not valid JSON ({e.msg} at column {e.colno}); give a JSON "
                            f"object of schedule fields or a file holding one") from None
    except ValueError as e:         # json's int() of a number over 4300 digits
        raise ScheduleError(f"--schedule holds a number of over 4300 digits, far too large for any schedule "
                            f"field ({str(e).split(';')[0]})") from None
    if not isinstance(given, dict):
        raise ScheduleError("--schedule must be a JSON object of schedule fields")
    from ..search.heuristic import as_schedule
    return as_schedule(given, problem, device)        # laid over the default, as the API's schedule= is


# ---- the tuning database ---------------------------------------------------------------------------
def db_for_writing(path):
    """A function opening the tuning database at `path` (--db; None: $NMGEN_DB or the default) for
    writing, after checking now, creating nothing, that it can be written: an existing file is
    opened and must be writable, a missing one creatable. So a command that fails before writing
    (no GPU, a bad input) reports a bad --db first and leaves no empty database behind."""
    from ..db import check_creatable, default_path
    from ..search.choose import open_db
    target = path or default_path()
    if os.path.exists(target):
        open_db(path).require_writable()
    else:
        check_creatable(target)
    return lambda: open_db(path)


def db_path(text: str) -> str:
    """--db's value: a path; an empty one is refused (it would fall back to the default database)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the tuning database's file, or leave --db out for "
                                         "$NMGEN_DB or ~/.cache/nmgen/tuning.db")
    return text


def add_db_arg(p):
    p.add_argument("--db", metavar="PATH", type=db_path,
                   help="tuning database (default $NMGEN_DB or ~/.cache/nmgen/tuning.db)")

