"""The tuning database: what was measured, for reuse (sqlite-utils, one WAL-mode file).

One record per (problem, schedule hash, device, toolchain): the device is name + compute
capability + SM count, the toolchain nmgen + LLVM + PTX ISA + driver versions, so a record is
only reused where it was measured. Values are plain: the schedule as JSON, the PTX hash,
resources, timing statistics and how they were taken, the model's prediction, a status.

Writes are short transactions with a busy timeout, so several processes can tune into one file;
`record` keeps the best: a faster measurement replaces a slower one, a failure never replaces a
success, and the tuner skips every schedule already recorded (that is how a killed search resumes).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

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

migrations = Migrations("nmgen.db")


@migrations()
def m0001_results(db):
    db["results"].create(COLUMNS, pk=KEY, not_null={"status"}, if_not_exists=True)
    db["results"].create_index(["problem_key", "device_key", "toolchain_key", "status", "median_us"],
                               index_name="idx_results_best", if_not_exists=True)


SCHEMA_VERSION = len(migrations._migrations)


def default_path() -> Path:
    """$NMGEN_DB, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache)/nmgen/tuning.db."""
    env = os.environ.get("NMGEN_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nmgen" / "tuning.db"


class TuningDB:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        try:
            self.db.enable_wal()
        except sqlite3.OperationalError:   # another process is switching it right now: it is WAL either way
            pass
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self):
        for attempt in range(20):        # two processes creating the file at once: one wins, the other retries
            try:
                migrations.apply(self.db)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "already exists" not in str(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
        migrations.apply(self.db)

    def schema_version(self) -> int:
        return len(migrations.applied(self.db))

    def close(self):
        self.db.close()

    # ---- writing -----------------------------------------------------------------------------------
    def record(self, rec: dict) -> None:
        self.record_many([rec])

    def record_many(self, recs) -> None:
        rows = [_clean(r) for r in recs]
        if not rows:
            return
        cols = list(COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in KEY)
        sql = (f"INSERT INTO results ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
               f"ON CONFLICT({', '.join(KEY)}) DO UPDATE SET {updates} "
               f"WHERE excluded.status = 'ok' AND (results.status != 'ok' OR excluded.median_us < results.median_us)")
        with self.db.atomic():
            for r in rows:
                self.db.execute(sql, [r.get(c) for c in cols])

    # ---- reading -----------------------------------------------------------------------------------
    def best(self, problem_key: str, device_key: str, toolchain_key: str) -> dict | None:
        rows = list(self.db.query(
            "SELECT * FROM results WHERE problem_key = ? AND device_key = ? AND toolchain_key = ? "
            "AND status = 'ok' ORDER BY median_us LIMIT 1", [problem_key, device_key, toolchain_key]))
        return rows[0] if rows else None

    def recorded(self, problem_key: str, device_key: str, toolchain_key: str) -> dict[str, str]:
        """schedule hash -> status of everything recorded for this problem here (any status)."""
        return {r["schedule_hash"]: r["status"] for r in self.db.query(
            "SELECT schedule_hash, status FROM results WHERE problem_key = ? AND device_key = ? AND toolchain_key = ?",
            [problem_key, device_key, toolchain_key])}

    def bests_by_problem(self, device_key: str, toolchain_key: str, per_problem: int = 2) -> list[dict]:
        """The `per_problem` fastest successful records of every problem measured on this device
        with this toolchain (the tuner seeds a new problem with its neighbours' bests)."""
        return list(self.db.query(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY problem_key ORDER BY median_us) AS rank "
            "FROM results WHERE device_key = ? AND toolchain_key = ? AND status = 'ok') WHERE rank <= ?",
            [device_key, toolchain_key, per_problem]))

    def rows(self, problem_key: str | None = None, device_key: str | None = None, status: str | None = None,
             order: str = "median_us", toolchain_key: str | None = None) -> list[dict]:
        where, args = [], []
        for col, val in (("problem_key", problem_key), ("device_key", device_key), ("status", status),
                         ("toolchain_key", toolchain_key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY problem_key, device_key, {order}"
        return list(self.db.query(sql, args))

    def summary(self) -> list[dict]:
        return list(self.db.query(
            "SELECT problem_key, device_key, toolchain_key, count(*) AS records, "
            "sum(status = 'ok') AS ok, min(CASE WHEN status = 'ok' THEN median_us END) AS best_us "
            "FROM results GROUP BY problem_key, device_key, toolchain_key ORDER BY problem_key, device_key"))

    # ---- merging databases -------------------------------------------------------------------------
    def export(self, f) -> int:
        n = 0
        for r in self.db.query("SELECT * FROM results ORDER BY problem_key, device_key, schedule_hash"):
            f.write(json.dumps(r, sort_keys=True) + "\n")
            n += 1
        return n

    def import_(self, f) -> int:
        recs = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"line {lineno} is not JSON ({e.msg}); expected the output of `nmgen db export`")
        self.record_many(recs)
        return len(recs)


def _clean(r: dict) -> dict:
    missing = [k for k in KEY + ("status",) if not r.get(k)]
    if missing:
        raise ValueError(f"a tuning record needs {', '.join(missing)}")
    if r["status"] not in STATUSES:
        raise ValueError(f"status {r['status']!r} is not one of {', '.join(STATUSES)}")
    unknown = set(r) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown tuning record field(s) {', '.join(sorted(unknown))}")
    out = dict(r)
    out.setdefault("measured_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return out
