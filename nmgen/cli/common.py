"""Arguments several commands share: the problem (--shape/--pattern/--vector) and --schedule."""
from __future__ import annotations

import json
import os

from ..errors import ScheduleError
from ..ir.problem import Pattern, Problem, parse_shape
from ..ir.schedule import Schedule


def add_problem_args(p, required=True):
    p.add_argument("--shape", required=required, metavar="MxNxK", help="C is MxN, A is MxK, B is KxN (e.g. 4096x4096x4096)")
    p.add_argument("--pattern", required=required, metavar="n:m", help="n of every m rows of B kept along K (e.g. 8:32)")
    p.add_argument("--vector", type=int, default=1, metavar="V",
                   help="consecutive columns sharing one choice of rows (default 1: element-wise n:m)")
    p.add_argument("--a-major", choices=("row", "col"), default="row",
                   help="A's memory order: row-major M x K (default) or column-major (K x M in memory)")


def problem_from(args) -> Problem:
    M, N, K = parse_shape(args.shape)
    return Problem(M, N, K, Pattern.parse(args.pattern, args.vector), a_major=args.a_major)


def add_schedule_arg(p):
    p.add_argument("--schedule", metavar="JSON", help="schedule as JSON (or a file holding it); fields left out "
                                                    "take the default schedule's values for the shape")


def schedule_from(args, problem: Problem, device) -> Schedule | None:
    if not getattr(args, "schedule", None):
        return None
    text = args.schedule
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        given = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleError(f"--schedule is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(given, dict):
        raise ScheduleError("--schedule must be a JSON object of schedule fields")
    from ..search.heuristic import default_schedule
    try:
        base = default_schedule(problem, device).to_dict()
    except ScheduleError:
        base = Schedule().to_dict()
    return Schedule.from_dict({**base, **given})


def add_db_arg(p):
    p.add_argument("--db", metavar="PATH", help="tuning database (default $NMGEN_DB or ~/.cache/nmgen/tuning.db)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v
