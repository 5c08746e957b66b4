"""Which schedule to run without measuring: the tuning database's best, else the model's best."""
from __future__ import annotations

import logging
import threading
import weakref

from ..ir.device import Device
from ..ir.problem import Problem
from ..ir.schedule import Schedule
from . import model
from .heuristic import default_schedule
from .space import a_choices, enumerate_space, rows_lengths

log = logging.getLogger("nmgen.search")
_dbs: dict = {}
_lock = threading.Lock()
# The model's choice per (problem, device key): without weights, or where B cannot change it (no
# "rows" schedule in the space); else per weight matrix (by identity: an NMMatrix's arrays are
# read-only), because the "rows" strategy's cost depends on B's indices (its compacted lists).
_model_choice: dict = {}
_model_choice_by_b: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_model_lock = threading.Lock()


def open_db(path=None, create: bool = True):
    """The tuning database at `path` (default: $NMGEN_DB or the user cache), opened once per process
    and usable from any thread. DatabaseError (nmgen.db) if the file cannot be nmgen's database;
    MissingDatabase, creating nothing, if there is none and not `create` (only writers create it)."""
    from ..db import TuningDB, default_path
    key = str(path or default_path())
    with _lock:
        db = _dbs.get(key)
        if db is None:
            db = _dbs[key] = TuningDB(key, create=create)
        return db


def _for_reading(db):
    """`db`, else the default database opened for reading; None where there is no file (no
    records: a lookup creates neither the database nor its directory)."""
    from ..db import MissingDatabase
    if db is not None:
        return db
    try:
        return open_db(create=False)
    except MissingDatabase:
        return None


def close_dbs() -> None:
    """Close every database `open_db` opened (the next `open_db` opens afresh)."""
    with _lock:
        for db in _dbs.values():
            db.close()
        _dbs.clear()


def _usable(db, problem: Problem, device: Device, rows, n: int = 1) -> list[Schedule]:
    """The first n schedules of `rows` (fastest first) that can run `problem` on `device`; a record
    whose schedule cannot (written outside nmgen) is skipped with a warning naming the database."""
    from ..db.store import schedule_problems
    out = []
    for r in rows:
        if len(out) == n:
            break
        s = Schedule.from_json(r["schedule"])        # the database returns only records that parse
        why = schedule_problems(problem, s, device)
        if why:
            db.warn_invalid(r, [f"schedule {s.short()}: {w}" for w in why])
        else:
            out.append(s)
    return out


def recorded_best(problem: Problem, device: Device, db=None) -> Schedule | None:
    """The database's fastest schedule for this problem, device and toolchain, or None; invalid
    records are skipped (with a warning naming the database) for the next valid one."""
    from ..toolchain import toolchain_key
    db = _for_reading(db)
    if db is None:
        return None
    keys = (problem.key(), device.key(), toolchain_key(device.arch, device.driver))
    rec = db.best(*keys)
    if rec is None:
        return None
    found = _usable(db, problem, device, [rec])          # the usual case: the fastest can run
    if not found:
        found = _usable(db, problem, device, db.rows(*keys[:2], status="ok", toolchain_key=keys[2]))
    return found[0] if found else None


def recorded_median(problem: Problem, device: Device, db=None) -> float | None:
    """The median time (us) of the database's fastest valid record for this problem, device and
    toolchain, or None where there is none."""
    from ..toolchain import toolchain_key
    db = _for_reading(db)
    if db is None:
        return None
    rec = db.best(problem.key(), device.key(), toolchain_key(device.arch, device.driver))
    return None if rec is None else rec["median_us"]


def recorded_top(problem: Problem, device: Device, db=None, n: int = 3) -> list[Schedule]:
    """The database's n fastest schedules for this problem, device and toolchain (distinct: a
    schedule has one record per problem, device and toolchain); invalid records are skipped."""
    from ..toolchain import toolchain_key
    db = _for_reading(db)
    if db is None:
        return []
    rows = db.rows(problem.key(), device.key(), status="ok", toolchain_key=toolchain_key(device.arch, device.driver))
    return _usable(db, problem, device, rows, n)


def model_best(problem: Problem, device: Device, B=None) -> Schedule:
    """The model's fastest schedule of the space (the "rows" strategy sized by B's real indices).
    Without B, "rows" schedules are ranked only where nothing else fits (windows so large that a
    whole window a K tile exceeds shared memory): sized by their bound, they would rank too slow."""
    a_rows = rows_lengths(problem, B)
    best: dict[bool, tuple] = {}                    # bounded "rows" schedule -> (time, schedule)
    for s in enumerate_space(problem, device):
        bounded = s.a_load == "rows" and B is None
        t = model.predict(problem, s, device, None, a_rows(s)).time_us
        if bounded not in best or t < best[bounded][0]:
            best[bounded] = (t, s)
    for bounded in (False, True):
        if bounded in best:
            return best[bounded][1]
    return default_schedule(problem, device)


def _weights_matter(problem: Problem) -> bool:
    """Whether the model's ranking depends on B: only "rows" schedules' costs read its indices."""
    return any(a_load == "rows" for a_load, _ in a_choices(problem))


def _model_cache(problem: Problem, B) -> dict | None:
    """The cache the model's choice for (problem, B) belongs in; None where B cannot be a weak key."""
    if B is None or not _weights_matter(problem):
        return _model_choice
    with _model_lock:
        try:
            return _model_choice_by_b.setdefault(B, {})
        except TypeError:       # not weakly referenceable: compute every time rather than guess
            return None


def chosen(problem: Problem, device: Device, B=None, db=None) -> tuple[Schedule, str]:
    """`choose`'s schedule and where it came from, in words for a report: the database's best (its
    path), else the model's choice and why (no database, no record for this problem and device,
    or a database that could not be read). `db`: a TuningDB, or None for the default one."""
    from ..db import default_path
    try:
        reader = _for_reading(db)
        s = recorded_best(problem, device, reader) if reader is not None else None
        path = reader.path if reader is not None else default_path()
        why = (f"no usable record for this problem, {device.name} and this toolchain in {path}"
               if reader is not None else f"no tuning database at {path}")
    except Exception as e:  # noqa: BLE001 - an unreadable database must not stop a product from running
        log.warning("tuning database unavailable (%s); using the model's choice", e)
        s, why = None, f"the tuning database could not be read: {e}"
    if s is not None:
        return s, f"the tuning database's best ({path}, {device.name})"
    return _model_choice_for(problem, device, B), f"the performance model's choice ({why})"


def choose(problem: Problem, device: Device, B=None, db=None) -> Schedule:
    """The database's best for (problem, device, toolchain), else the model's best for B's indices
    (an unreadable database is warned about and passed over: a product must still run)."""
    return chosen(problem, device, B, db)[0]


def _model_choice_for(problem: Problem, device: Device, B=None) -> Schedule:
    """`model_best`, cached per problem and device (and per weight matrix where B changes it)."""
    key = (problem, device.key())
    cache = _model_cache(problem, B)
    s = cache.get(key) if cache is not None else None
    if s is None:
        s = model_best(problem, device, B)
        if cache is not None:
            cache[key] = s
        log.debug("no tuning record for %s on %s; using the model's best: %s", problem, device.name, s.short())
    return s
