"""nmgen db: look into, export and merge tuning databases.

Only nmgen's own databases are opened (nmgen.db refuses any other file, unchanged); outputs are
written to a temporary file renamed over the target, so a failed export never empties a file."""
from __future__ import annotations

import os
import sys

from ..errors import NMGenError
from ..ir.schedule import Schedule
from .common import (add_db_arg, add_output_arg, add_problem_args, atomic_output, db_for_writing, problem_from,
                     read_text)


def register(sub):
    p = sub.add_parser("db", help="list, show, export and import tuning records",
                       description="The tuning database that `nmgen search` fills and nmgen.spmm reads.")
    ops = p.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    for name, text in (("list", "problems recorded, with counts and best times"),
                       ("best", "the best record of a problem, per device"),
                       ("show", "every record of a problem"),
                       ("export", "all valid records as JSON lines (stdout or -o FILE, replaced only when "
                                  "the export is complete)"),
                       ("import", "merge JSON lines from `nmgen db export` (keeps the better of two records); "
                                  "all or nothing: any invalid line, each reported by number, imports nothing"),
                       ("quality", "the performance model against the measurements: Spearman, model-topk gap")):
        q = ops.add_parser(name, help=text, description=text)
        add_db_arg(q)
        if name in ("best", "show"):
            add_problem_args(q)
        if name == "export":
            add_output_arg(q, "-o", "--output", metavar="FILE", help="write the records here instead of standard output")
        if name == "import":
            q.add_argument("file", metavar="FILE", help="JSON lines of `nmgen db export`; - for standard input")
        if name == "quality":
            add_output_arg(q, "--json", metavar="FILE", help="also write the numbers as JSON")
            q.add_argument("--current-model", action="store_true",
                           help="judge today's model: predict again from each record's schedule and registers")
        q.set_defaults(run=run)
    p.set_defaults(run=run)


def run(args):
    from ..search.choose import open_db
    # (an output naming the database itself is refused before this: common.refuse_existing_outputs)
    if args.op == "import":
        return _import(args)
    p = problem_from(args) if args.op in ("best", "show") else None    # a bad problem first: no database is needed to say so
    db = open_db(args.db, create=False)     # the others only read: a missing database is an error
    if args.op == "list":
        rows = db.summary()
        print(f"{db.path}: {len(rows)} problem/device/toolchain group(s)")
        for r in rows:
            best = f"{r['best_us']:.1f} us" if r["best_us"] is not None else "-"
            print(f"  {r['problem_key']:36s} {r['device_key']:40s} {r['records']:5d} records  {r['ok']:5d} ok  best {best}")
        return 0
    if args.op in ("best", "show"):
        rows = db.rows(p.key(), status="ok" if args.op == "best" else None)
        if not rows:
            # the same sizes recorded as another problem (A's order, dtypes, pattern): name them
            near = sorted({g["problem_key"] for g in db.summary()
                           if g["problem_key"].startswith(f"{p.M}x{p.N}x{p.K}:")})
            hint = (f"; this database has {', '.join(near)} for these sizes (the key adds :Acol for --a-major col, "
                    f"the dtype and the pattern)" if near else "; run `nmgen search` first")
            raise NMGenError(f"no records for {p} ({p.key()}) in {db.path}{hint}")
        if args.op == "best":
            seen = set()
            rows = [r for r in rows if not (r["device_key"], r["toolchain_key"]) in seen
                    and not seen.add((r["device_key"], r["toolchain_key"]))]
        for r in rows:
            t = f"{r['median_us']:10.1f} us" if r["median_us"] is not None else f"{r['status']:>13}"
            print(f"{t}  {Schedule.from_json(r['schedule']).short():52s} {r['device_name'] or r['device_key']}  [{r['toolchain_key']}]")
            if args.op == "best":
                print(f"            {r['schedule']}")
        return 0
    if args.op == "quality":
        import json
        from ..search.quality import quality
        groups = db.summary()
        if not groups:                   # as `db best`: nothing recorded is an error, not a silent success
            raise NMGenError(f"no records to judge in {db.path}; run `nmgen search` first")
        out = []
        for g in groups:
            rows = db.rows(g["problem_key"], g["device_key"], toolchain_key=g["toolchain_key"])
            if args.current_model:
                rows = [dict(r, model_us=_predict_again(r)) for r in rows]
            q = dict(quality(rows), problem=g["problem_key"], device=g["device_key"])
            out.append(q)
            if q["n"] < 3:
                print(f"{g['problem_key']:36s} {q['n']} measured: too few to judge")
                continue
            print(f"{g['problem_key']:36s} {q['n']:4d} measured  Spearman {q['spearman']:.3f}  best {q['best_us']:.1f} us  "
                  f"model top {q['k']}: {q['topk_best_us']:.1f} us ({q['topk_gap'] * 100:+.1f}%)")
        if args.json:
            with atomic_output(args.json) as f:
                json.dump(out, f, indent=1)
        return 0
    if args.op == "export":
        if not args.output:
            db.export(sys.stdout)
            return 0
        with atomic_output(args.output) as f:
            n = db.export(f)
        print(f"exported {n} records to {args.output}")
        return 0


def _import(args) -> int:
    """Every line checked before the database is opened (or created): nothing changes, nothing is
    created, unless all of them are records."""
    import io
    from ..db import parse_records
    text = read_text(args.file, "import file")
    open_writable = db_for_writing(args.db)
    try:
        recs = parse_records(io.StringIO(text))
    except NMGenError as e:
        raise NMGenError(f"{'standard input' if args.file == '-' else args.file}: {e}") from None
    from ..db import default_path
    if not recs and not os.path.exists(args.db or default_path()):
        # an empty file (a failed export piped in) must not leave an empty database behind
        raise NMGenError(f"{'standard input' if args.file == '-' else args.file} holds no records; nothing "
                         f"imported and no database created (give the output of `nmgen db export`)")
    db = open_writable()
    written = db.record_many(recs)
    print(f"imported {len(recs)} records into {db.path}: {written} new or faster than the record they met, "
          f"{len(recs) - written} already there as good or better")
    return 0


def _predict_again(r: dict) -> float:
    """The current model's prediction for a record (its device rebuilt from the record's facts)."""
    from ..ir.device import for_arch
    from ..ir.problem import Problem
    from ..search.model import predict
    arch = "sm_" + r["cc"].replace(".", "") if r.get("cc") else "sm_90"
    dev = for_arch(arch if arch in ("sm_80", "sm_86", "sm_89", "sm_90") else "sm_90").replace(
        name=r["device_name"] or "", sms=r["sms"] or 132)
    p = Problem.from_key(r["problem_key"])            # the database reads back only records whose key is one
    return predict(p, Schedule.from_json(r["schedule"]), dev, r["registers"]).time_us
