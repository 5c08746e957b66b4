"""The tuning database: what was measured, for reuse (sqlite-utils, one WAL-mode file).

One record per (problem, schedule hash, device, toolchain): the device is name + compute
capability + SM count, the toolchain nmgen + LLVM + PTX ISA + driver versions, so a record is
only reused where it was measured. Values are plain: the schedule as JSON, the PTX hash,
resources, timing statistics and how they were taken, the model's prediction, a status.

Writes are short transactions with a busy timeout, so several processes can tune into one file;
`record` keeps the best: a faster measurement replaces a slower one, a failure never replaces a
success, and the tuner skips every schedule already recorded (that is how a killed search resumes).
One TuningDB may be used from any thread: its one connection is shared under a lock.

The file is nmgen's only if it says so: SQLite's application_id (stamped at creation; files of
earlier nmgen versions are recognised by their nmgen.db migrations and stamped), and its schema
version (user_version and the applied migrations) is one this code knows. Anything else is refused
before a byte of it changes. Every record is checked on the way in (`record`, `import_`) and on
the way out (`best`, `rows`, ...): a record that is not what nmgen writes is skipped with a warning
that names the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from functools import lru_cache
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ..ir.errors import NMGenError

log = logging.getLogger("nmgen.db")

KEY = ("problem_key", "schedule_hash", "device_key", "toolchain_key")
STATUSES = ("ok", "compile_error", "launch_error", "wrong_result")
COLUMNS = {
    "problem_key": str, "schedule_hash": str, "device_key": str, "toolchain_key": str,
    "M": int, "N": int, "K": int, "keep_n": int, "window_m": int, "vector": int,   # n:m (SQLite names ignore case)
    "schedule": str, "device_name": str, "cc": str, "sms": int,
    "nmgen_version": str, "llvm_version": str, "ptx_isa": str, "driver": int,
    "ptx_hash": str, "registers": int, "smem_bytes": int, "spill_bytes": int,
    "status": str, "error": str,
    "median_us": float, "mean_us": float, "min_us": float, "max_us": float, "reps": int, "warmup": int,
    "l2": str, "rel_err": float, "model_us": float, "measured_at": str,
}
REQUIRED = KEY + ("status", "schedule")
TIMES = ("median_us", "mean_us", "min_us", "max_us")     # measured microseconds: finite and positive
PROBLEM_COLUMNS = ("M", "N", "K", "keep_n", "window_m", "vector")     # what problem_key says, spelled out

# "nmgn": SQLite's header field for the application that owns the file (`PRAGMA application_id`)
APPLICATION_ID = int.from_bytes(b"nmgn", "big")
SQLITE_MAGIC = b"SQLite format 3\x00"

migrations = Migrations("nmgen.db")


@migrations()
def m0001_results(db):
    db["results"].create(COLUMNS, pk=KEY, not_null={"status"}, if_not_exists=True)
    db["results"].create_index(["problem_key", "device_key", "toolchain_key", "status", "median_us"],
                               index_name="idx_results_best", if_not_exists=True)


SCHEMA_VERSION = len(migrations._migrations)


class DatabaseError(NMGenError, RuntimeError):
    """A tuning database file that cannot be opened, read or written as asked; the message names it."""


class MissingDatabase(DatabaseError):
    """No tuning database at the path a reader asked for (nothing was created there)."""


class RecordError(NMGenError, ValueError):
    """A tuning record (or a line of an import) that is not what nmgen writes; the message says why."""


def default_path() -> Path:
    """$NMGEN_DB, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache)/nmgen/tuning.db."""
    env = os.environ.get("NMGEN_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nmgen" / "tuning.db"


class TuningDB:
    def __init__(self, path: str | os.PathLike | None = None, create: bool = True):
        """Open (or, with `create`, create) the tuning database at `path` (default: `default_path()`).

        Raises DatabaseError, having changed nothing, for ':memory:' (the path would be a file of that
        name, not SQLite's in-memory database), a directory, a file that is not SQLite,
        an SQLite file of another application, a database of a newer nmgen or with changed
        columns, or a file it can neither open nor create; MissingDatabase, creating neither the
        file nor its directory, where there is no file and not `create` (a reader: `nmgen db
        list`, the lookups of nmgen.compile). A read-only file opens for reading."""
        self.path = Path(path) if path else default_path()
        if str(self.path) == ":memory:":   # SQLite's name for a database that ends with the connection
            raise DatabaseError("the tuning database ':memory:' would be a file of that name here, not SQLite's "
                                "in-memory database; give a file path (--db FILE or NMGEN_DB), e.g. a temporary one")
        self.create = create
        self._lock = threading.RLock()
        self._warned: set = set()
        self.readonly = False
        conn = self._connect()
        try:
            self.db = sqlite_utils.Database(conn)
            self._setup()
        except sqlite3.Error as e:
            conn.close()
            raise DatabaseError(f"cannot open the tuning database {self.path} ({e}); give another --db") from None
        except BaseException:
            conn.close()
            raise

    # ---- opening -----------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """A connection to the file, read-only where it cannot be written; nothing in it changes."""
        p = self.path
        if p.is_dir():
            raise DatabaseError(f"the tuning database {p} is a directory; give a file path (--db FILE or NMGEN_DB)")
        if p.exists():
            if not p.is_file():
                raise DatabaseError(f"the tuning database {p} is not a regular file; give a file path (--db FILE)")
            wal = _check_header(p)
            self.readonly = not (os.access(p, os.W_OK) and os.access(p.parent, os.W_OK))
        elif not self.create:
            raise MissingDatabase(f"no tuning database at {p} (`nmgen search` or `nmgen db import` creates one); "
                                  f"check --db or NMGEN_DB")
        else:
            wal = False
            if p.parent.exists() and not p.parent.is_dir():
                raise DatabaseError(f"cannot create the tuning database {p}: {p.parent} is not a directory; "
                                    f"give another --db or NMGEN_DB")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DatabaseError(f"cannot create the tuning database's directory {p.parent} ({e.strerror}); "
                                    f"give a writable --db or NMGEN_DB") from None
            if not os.access(p.parent, os.W_OK):
                raise DatabaseError(f"cannot create the tuning database {p}: {p.parent} is not writable; "
                                    f"give a writable --db or NMGEN_DB")
        mode = "ro" if self.readonly else "rwc" if self.create else "rw"      # rw: never creates the file
        uri = f"file:{urllib.parse.quote(str(p.absolute()))}?mode={mode}"
        if self.readonly and wal and not Path(f"{p}-shm").exists():
            # reading a WAL file needs its -shm index, which cannot be created here; with no -wal
            # content the main file is the whole database, and SQLite may read it as unchanging
            if Path(f"{p}-wal").exists() and Path(f"{p}-wal").stat().st_size:
                raise DatabaseError(f"cannot read the tuning database {p}: it is read-only to this user and has "
                                    f"changes in {p}-wal that only a writer can apply; open it once as its owner")
            uri += "&immutable=1"
        try:
            # shared by every thread of the process, each use under self._lock
            return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open the tuning database {p} ({e}); give another --db") from None

    def _setup(self):
        """Identify the file (refusing what is not nmgen's), then migrate, stamp and switch to WAL."""
        state = _inspect(self.db.conn, self.path)
        if state["kind"] == "new" and not self.create:      # an empty file: a reader leaves it empty
            raise MissingDatabase(f"the tuning database {self.path} is an empty file (`nmgen search` or `nmgen db "
                                  f"import` sets it up); nmgen leaves it unchanged")
        if _up_to_date(state):
            pass
        elif self.readonly:
            if state["kind"] == "new" or len(state["applied"]) < SCHEMA_VERSION:
                raise DatabaseError(f"the tuning database {self.path} is read-only and needs setting up "
                                    f"(schema {len(state['applied'])} -> {SCHEMA_VERSION}); make it writable "
                                    f"or give another --db")
        else:
            self._initialise()
        if not self.readonly:
            try:
                self.db.enable_wal()
            except sqlite3.OperationalError:   # another process is switching it right now: it is WAL either way
                pass
            self.db.execute("PRAGMA synchronous=NORMAL")

    def _initialise(self):
        """Stamp the application id, apply pending migrations and the schema version, in one
        transaction taken before looking again (another process may have set the file up meanwhile)."""
        for attempt in range(20):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            if not _up_to_date(_inspect(self.db.conn, self.path)):
                self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                migrations.apply(self.db)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        with self._lock:
            return len(migrations.applied(self.db))

    def close(self):
        with self._lock:
            self.db.close()

    def require_writable(self) -> None:
        """DatabaseError unless records can be written (checked before a long search starts)."""
        if self.readonly:
            raise DatabaseError(f"the tuning database {self.path} is read-only (the file or its directory); "
                                f"make it writable or give another --db")

    # ---- writing -----------------------------------------------------------------------------------
    def record(self, rec: dict) -> None:
        self.record_many([rec])

    def record_many(self, recs) -> int:
        """Insert or improve records; RecordError (nothing written) if one is not a valid record.
        Returns how many were written: new, or better than the record they met."""
        rows = [_clean(r) for r in recs]
        if not rows:
            return 0
        self.require_writable()
        cols = list(COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in KEY)
        sql = (f"INSERT INTO results ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
               f"ON CONFLICT({', '.join(KEY)}) DO UPDATE SET {updates} "
               f"WHERE excluded.status = 'ok' AND (results.status != 'ok' OR excluded.median_us < results.median_us)")
        written = 0
        with self._lock:
            try:
                with self.db.atomic():
                    for r in rows:
                        written += self.db.execute(sql, [r.get(c) for c in cols]).rowcount   # 0: kept the old
            except sqlite3.Error as e:
                raise DatabaseError(f"cannot write the tuning database {self.path} ({e}); "
                                    f"nothing of this batch was recorded") from None
        return written

    # ---- reading -----------------------------------------------------------------------------------
    def _query(self, sql: str, args=()) -> list[dict]:
        with self._lock:
            try:
                return list(self.db.query(sql, args))
            except sqlite3.Error as e:
                raise DatabaseError(f"cannot read the tuning database {self.path} ({e})") from None

    def _valid(self, r: dict) -> bool:
        """Whether `r` is a record nmgen writes; warns (naming the file and the record) if not."""
        why = record_problems(r)
        if why:
            self.warn_invalid(r, why)
        return not why

    def warn_invalid(self, r: dict, why: list[str]) -> None:
        """Warn, once per record, that record `r` of this file is ignored, and why."""
        ident = (r.get("problem_key"), r.get("schedule_hash"), r.get("device_key"), r.get("toolchain_key"))
        with self._lock:
            if ident in self._warned:
                return
            self._warned.add(ident)
        log.warning("tuning database %s: ignoring the record of %s, schedule %s on %s: %s",
                    self.path, *ident[:3], "; ".join(why))

    def _valid_rows(self, rows: list[dict]) -> list[dict]:
        return [r for r in rows if self._valid(r)]

    def best(self, problem_key: str, device_key: str, toolchain_key: str) -> dict | None:
        """The fastest valid successful record, or None (invalid ones are skipped with a warning)."""
        sql = ("SELECT * FROM results WHERE problem_key = ? AND device_key = ? AND toolchain_key = ? "
               "AND status = 'ok' ORDER BY median_us")
        args = [problem_key, device_key, toolchain_key]
        first = self._query(sql + " LIMIT 1", args)       # the usual case: the fastest is valid
        if not first or self._valid(first[0]):
            return first[0] if first else None
        return next((r for r in self._query(sql, args) if self._valid(r)), None)

    def recorded(self, problem_key: str, device_key: str, toolchain_key: str) -> dict[str, str]:
        """schedule hash -> status of everything recorded for this problem here (any status)."""
        return {r["schedule_hash"]: r["status"] for r in self._query(
            "SELECT schedule_hash, status FROM results WHERE problem_key = ? AND device_key = ? AND toolchain_key = ?",
            [problem_key, device_key, toolchain_key])}

    def bests_by_problem(self, device_key: str, toolchain_key: str, per_problem: int = 2) -> list[dict]:
        """The `per_problem` fastest successful records of every problem measured on this device
        with this toolchain (the tuner seeds a new problem with its neighbours' bests)."""
        out, taken = [], {}
        for r in self._query("SELECT * FROM results WHERE device_key = ? AND toolchain_key = ? AND status = 'ok' "
                             "ORDER BY problem_key, median_us", [device_key, toolchain_key]):
            n = taken.get(r["problem_key"], 0)
            if n < per_problem and self._valid(r):       # an invalid record leaves its place to the next
                taken[r["problem_key"]] = n + 1
                out.append(r)
        return out

    def rows(self, problem_key: str | None = None, device_key: str | None = None, status: str | None = None,
             order: str = "median_us", toolchain_key: str | None = None) -> list[dict]:
        """Valid records matching the given keys (invalid ones are skipped with a warning)."""
        if order not in COLUMNS:
            raise ValueError(f"order={order!r} is not a column of the tuning database")
        where, args = [], []
        for col, val in (("problem_key", problem_key), ("device_key", device_key), ("status", status),
                         ("toolchain_key", toolchain_key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY problem_key, device_key, {order}"
        return self._valid_rows(self._query(sql, args))

    def summary(self) -> list[dict]:
        """Per problem, device and toolchain: records, successes, and the best valid time (us)."""
        groups = self._query(
            "SELECT problem_key, device_key, toolchain_key, count(*) AS records, sum(status = 'ok') AS ok "
            "FROM results GROUP BY problem_key, device_key, toolchain_key ORDER BY problem_key, device_key")
        for g in groups:
            best = self.best(g["problem_key"], g["device_key"], g["toolchain_key"])
            g["best_us"] = best["median_us"] if best else None
        return groups

    # ---- merging databases -------------------------------------------------------------------------
    def export(self, f) -> int:
        """Write every valid record to the text file `f` as JSON lines; the number written."""
        n = 0
        for r in self._valid_rows(self._query("SELECT * FROM results ORDER BY problem_key, device_key, schedule_hash")):
            f.write(json.dumps(r, sort_keys=True) + "\n")
            n += 1
        return n

    def import_(self, f) -> int:
        """Merge the JSON lines of `f` (`nmgen db export`'s output): all or nothing. RecordError
        naming every bad line (its number and what is wrong) if any line is not a valid record."""
        recs = parse_records(f)
        self.record_many(recs)
        return len(recs)


def parse_records(f) -> list[dict]:
    """The records of JSON lines `f` (`nmgen db export`'s output), each checked; RecordError naming
    every bad line (its number and what is wrong) if any is not a valid record. Touches no database."""
    recs, bad = [], []
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {lineno} is not JSON ({e.msg})")
            continue
        if not isinstance(r, dict):
            bad.append(f"line {lineno} is a JSON {type(r).__name__}, not a record object")
            continue
        why = record_problems(r)
        if why:
            bad.append(f"line {lineno}: {'; '.join(why)}")
        else:
            recs.append(r)
    if bad:
        more = f"; and {len(bad) - 5} more bad lines" if len(bad) > 5 else ""
        raise RecordError(f"{len(bad)} bad line(s), nothing imported: {'; '.join(bad[:5])}{more}; "
                          f"expected the output of `nmgen db export`")
    return recs


def check_creatable(path) -> None:
    """DatabaseError (one line) unless a tuning database could be created at `path`, where there is
    no file yet, creating nothing (neither file nor directory): writers check this before work that
    may fail (no GPU, bad input), so that a failed run leaves no empty database behind."""
    p = Path(path)
    if p.parent.exists() and not p.parent.is_dir():
        raise DatabaseError(f"cannot create the tuning database {p}: {p.parent} is not a directory; "
                            f"give another --db or NMGEN_DB")
    ancestor = p.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise DatabaseError(f"cannot create the tuning database {p}: {ancestor} is not a writable directory; "
                            f"give a writable --db or NMGEN_DB")


# ---- what the file is ------------------------------------------------------------------------------
def _check_header(p: Path) -> bool:
    """DatabaseError unless `p` is empty or starts with SQLite's header (read without SQLite);
    whether it is in WAL mode (header bytes 18-19)."""
    try:
        with open(p, "rb") as f:
            head = f.read(20)
    except OSError as e:
        raise DatabaseError(f"cannot read the tuning database {p} ({e.strerror}); give another --db") from None
    if head and head[:len(SQLITE_MAGIC)] != SQLITE_MAGIC:
        raise DatabaseError(f"{p} is not an SQLite database, so not an nmgen tuning database; "
                            f"nmgen leaves it unchanged: give another --db")
    return head[18:20] == b"\x02\x02"


def _inspect(conn: sqlite3.Connection, path: Path) -> dict:
    """What the file holds, read-only: kind ("new", "nmgen", "legacy": an nmgen file from before the
    application id), applied nmgen.db migrations, user_version. DatabaseError for anything nmgen must
    not touch: another application's file, a newer nmgen's, a results table with other columns."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if not r[0].startswith("sqlite_")}
        applied = []
        if Migrations.migrations_table in tables:
            applied = [r[0] for r in conn.execute(
                f"SELECT name FROM {Migrations.migrations_table} WHERE migration_set = ? ORDER BY rowid",
                [migrations.name])]
        columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")] if "results" in tables else None
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{path} is not a readable SQLite database ({e}); nmgen leaves it unchanged: "
                            f"give another --db") from None
    if app_id == APPLICATION_ID:
        kind = "nmgen"
    elif app_id == 0 and not tables:
        kind = "new"
    elif app_id == 0 and applied and "results" in tables:
        kind = "legacy"
    else:
        what = f"application_id {app_id}" if app_id else "tables " + ", ".join(sorted(tables))
        raise DatabaseError(f"{path} is an SQLite database of another application ({what}), not an nmgen "
                            f"tuning database; nmgen leaves it unchanged: give another --db")
    known = [m.name for m in migrations._migrations]
    if version > SCHEMA_VERSION or any(name not in known for name in applied):
        schema = max(version, len(applied))
        raise DatabaseError(f"the tuning database {path} was written by a newer nmgen (schema {schema}, this "
                            f"nmgen knows {SCHEMA_VERSION}); upgrade nmgen or use another --db")
    if columns is not None and columns != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in columns]
        extra = [c for c in columns if c not in COLUMNS]
        raise DatabaseError(f"the tuning database {path} has a results table with other columns than nmgen "
                            f"writes (missing {', '.join(missing) or 'none'}; unknown {', '.join(extra) or 'none'}); "
                            f"it was changed outside nmgen: use another --db")
    return {"kind": kind, "applied": applied, "version": version}


def _up_to_date(state: dict) -> bool:
    return (state["kind"] == "nmgen" and len(state["applied"]) == SCHEMA_VERSION
            and state["version"] == SCHEMA_VERSION)


# ---- what a record is ------------------------------------------------------------------------------
def _type_name(t) -> str:
    return {str: "a string", int: "an integer", float: "a number"}[t]


def _type_ok(v, t) -> bool:
    if isinstance(v, bool):
        return False
    if t is float:
        return isinstance(v, (int, float))
    return isinstance(v, t)


def record_problems(r: dict, runs: bool = True) -> list[str]:
    """Why `r` is not a tuning record nmgen writes: one phrase per fault, each with the value
    (empty when it is one). Checks every column's type, the status, that problem_key is a problem
    key its M, N, K and n:m columns agree with, that the schedule is a valid Schedule and (with
    `runs`), for a success, that it could run the problem on some GPU nmgen targets whatever the
    weights."""
    why = []
    unknown = sorted(set(r) - set(COLUMNS))
    if unknown:
        why.append(f"unknown field(s) {', '.join(unknown)}")
    for c in REQUIRED:
        if r.get(c) is None or r.get(c) == "":
            why.append(f"{c} is missing")
    for c, t in COLUMNS.items():
        v = r.get(c)
        if v is not None and not _type_ok(v, t):
            why.append(f"{c}={_short(v)} must be {_type_name(t)}")
        elif c in TIMES and v is not None and not (math.isfinite(v) and v > 0):
            why.append(f"{c}={v!r} must be a positive number of microseconds")
        elif c == "model_us" and v is not None and not v > 0:     # infinite: the model says it does not fit
            why.append(f"model_us={v!r} must be a positive number of microseconds (or infinity)")
    if why:
        return why
    if r["status"] not in STATUSES:
        why.append(f"status={r['status']!r} is not one of {', '.join(STATUSES)}")
    elif r["status"] == "ok" and r.get("median_us") is None:
        why.append("a record with status ok needs median_us")
    why += _schedule_problems(r["problem_key"], r["schedule"], runs and r["status"] == "ok",
                              tuple(r.get(c) for c in PROBLEM_COLUMNS))
    return why


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@lru_cache(maxsize=4096)
def _schedule_problems(problem_key: str, schedule_json: str, runs: bool, columns: tuple) -> list[str]:
    """The problem key, the problem columns and the schedule of a record, checked (cached: the
    same few schedules come back for every lookup)."""
    from ..ir.errors import NMGenError as _Error
    from ..ir.schedule import Schedule
    try:
        problem = problem_of_key(problem_key)
    except RecordError as e:
        return [str(e)]
    said = (problem.M, problem.N, problem.K, problem.pattern.n, problem.pattern.m, problem.pattern.vector)
    wrong = [f"{c}={v!r}" for c, v, k in zip(PROBLEM_COLUMNS, columns, said) if v is not None and v != k]
    if wrong:
        return [f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not match problem_key {problem_key!r}"]
    try:
        s = Schedule.from_json(schedule_json)
    except _Error as e:
        return [f"schedule: {e}"]
    if not runs:
        return []            # a failure's schedule is never run again: that it parses is enough
    return [f"schedule {s.short()}: {w}" for w in schedule_problems(problem, s)]


def problem_of_key(key: str):
    """The Problem of a `Problem.key()` text (`MxNxK:n:m:V:dtype`, `:Acol` for column-major A,
    `:C<dtype>` for a C dtype other than A's); RecordError if it is none."""
    from ..ir.errors import NMGenError as _Error
    from ..ir.problem import Problem
    try:
        return Problem.from_key(key)
    except _Error as e:
        raise RecordError(f"problem_key={e}") from None


@lru_cache(maxsize=4096)
def schedule_problems(problem, s, device=None) -> list[str]:
    """Why schedule `s` can never run `problem` on `device` (on any GPU nmgen targets when None),
    whatever the weights: ir.validate's reasons, with the "rows" strategy's A lists at their
    shortest, so a reason given here holds for every B. Empty when it may run."""
    from ..ir.device import ARCHS, for_arch
    from ..ir.problem import ceil_div
    from ..ir.validate import problems
    if device is None:
        devices = [for_arch(a) for a in ARCHS]
        # the newest architecture (what only it runs, wgmma on sm_90, may run) with every limit at its largest
        device = max(devices, key=lambda d: d.cc).replace(name="any GPU nmgen targets", **{
            f: max(getattr(d, f) for d in devices)
            for f in ("smem_per_block", "smem_per_sm", "regs_per_sm", "max_threads_per_block")})
    # every vector keeps KR distinct rows of a K tile: no list is shorter (padded to 8 entries)
    a_rows = ceil_div(s.k_windows * problem.pattern.n, 8) * 8 if s.a_load == "rows" else None
    return problems(problem, s, device, a_rows)


def _clean(r: dict) -> dict:
    """The record to write: RecordError unless valid; the problem columns filled in from the key.
    Whether the schedule can run is not asked again here: the tuner measured it (it is asked of
    what `import_` reads, and of every record read back)."""
    if not isinstance(r, dict):
        raise RecordError(f"a tuning record must be a dict of columns, got {type(r).__name__}")
    why = record_problems(r, runs=False)
    if why:
        raise RecordError(f"invalid tuning record ({'; '.join(why)})")
    out = dict(r)
    p = problem_of_key(r["problem_key"])
    for c, v in zip(PROBLEM_COLUMNS, (p.M, p.N, p.K, p.pattern.n, p.pattern.m, p.pattern.vector)):
        out.setdefault(c, v)
        if out[c] is None:
            out[c] = v
    out.setdefault("measured_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return out
