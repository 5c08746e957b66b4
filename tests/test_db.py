import io
import json
import logging
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from nmgen.db import APPLICATION_ID, SCHEMA_VERSION, DatabaseError, RecordError, TuningDB
from nmgen.db.store import migrations
from nmgen.ir.device import for_arch
from nmgen.ir.problem import Pattern, Problem
from nmgen.ir.schedule import Schedule

PROBLEM = Problem(64, 64, 64, Pattern(2, 4))
SCHEDULE = Schedule(block_m=64, block_n=64, warp_m=32, warp_n=32, thread_m=4, thread_n=8)


def rec(h, us=None, status="ok", problem="p", schedule=SCHEDULE):
    """A valid record: problem "p" and "q" are two 64x64xK 2:4 problems."""
    key = {"p": PROBLEM.key(), "q": "64x64x128:2:4:1:f32"}.get(problem, problem)
    r = {"problem_key": key, "schedule_hash": h, "device_key": "dev", "toolchain_key": "tc", "status": status,
         "schedule": schedule if isinstance(schedule, str) else schedule.to_json()}
    if us is not None:
        r["median_us"] = us
    return r


P, Q = PROBLEM.key(), "64x64x128:2:4:1:f32"


def nmgen(*args):
    return subprocess.run([sys.executable, "-m", "nmgen.cli", *args], capture_output=True, text=True)


def one_line_error(r):
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_keep_best(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    db.record(rec("a", 10.0))
    db.record(rec("a", 12.0))                       # slower: kept the 10
    db.record(rec("a", status="wrong_result"))       # a failure never replaces a success
    assert db.best(P, "dev", "tc")["median_us"] == 10.0
    db.record(rec("a", 8.0))
    db.record(rec("b", 9.0))
    assert db.best(P, "dev", "tc")["schedule_hash"] == "a"
    assert db.recorded(P, "dev", "tc") == {"a": "ok", "b": "ok"}
    assert db.best(P, "other device", "tc") is None
    assert db.best(P, "dev", "tc")["M"] == 64 and db.best(P, "dev", "tc")["keep_n"] == 2   # from the key
    with pytest.raises(RecordError, match="status='fast' is not one of"):
        db.record(rec("c", status="fast"))


def test_schema_version_and_migration_of_an_old_file(tmp_path):
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()                    # an empty file from before any migration
    db = TuningDB(path)
    assert db.schema_version() == SCHEMA_VERSION == len(migrations._migrations)
    assert "results" in db.db.table_names()
    assert TuningDB(path).schema_version() == SCHEMA_VERSION   # re-opening applies nothing twice
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_reader_leaves_an_empty_file_empty(tmp_path):
    """A writer sets an empty file up (above); a reader (lookups, db list) finds no records in it and
    writes nothing: the file may be the user's, made for another purpose."""
    from nmgen.db import MissingDatabase
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(MissingDatabase, match="is an empty file"):
        TuningDB(path, create=False)
    assert path.read_bytes() == b""


def _writer(path, who, n):
    db = TuningDB(path)
    for i in range(n):
        db.record(rec(f"{who}-{i}", float(i + 1)))


def _four_writers(path: str, records: int) -> None:
    """Four spawned processes each record `records` schedules into `path` at once; all exit 0."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, records)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_four_processes_write_at_once(tmp_path):
    path = str(tmp_path / "c.db")
    TuningDB(path)
    _four_writers(path, 150)
    assert len(TuningDB(path).recorded(P, "dev", "tc")) == 600


def test_four_processes_create_one_file_at_once(tmp_path):
    path = str(tmp_path / "new.db")                  # no file yet: each process sets it up, one wins
    _four_writers(path, 20)
    assert len(TuningDB(path).recorded(P, "dev", "tc")) == 80


# ---- item 4: any thread ---------------------------------------------------------------------------
def test_eight_threads_record_and_read_one_database(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    errors = []

    def work(t):
        try:
            for i in range(40):
                db.record(rec(f"t{t}-{i}", float(100 - i), problem=f"{64 * (t + 1)}x64x64:2:4:1:f32"))
                best = db.best(f"{64 * (t + 1)}x64x64:2:4:1:f32", "dev", "tc")
                assert best["schedule_hash"] == f"t{t}-{i}" and best["median_us"] == 100 - i
        except Exception as e:  # noqa: BLE001 - reported below, with the thread
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r["records"] for r in db.summary()) == 320


def test_recorded_best_in_a_worker_thread_returns_the_recorded_schedule(caplog):
    from nmgen.search.choose import choose, open_db, recorded_best, recorded_top
    from nmgen.toolchain import toolchain_key
    dev = for_arch("sm_90")
    db = open_db()                                   # the test's own (conftest), opened in this thread
    tuned = SCHEDULE.replace(stages=2)
    db.record({**rec("h", 5.0, schedule=tuned), "device_key": dev.key(),
               "toolchain_key": toolchain_key(dev.arch, dev.driver)})
    got = {}

    def worker():
        got["best"] = recorded_best(PROBLEM, dev)
        got["top"] = recorded_top(PROBLEM, dev)
        got["choose"] = choose(PROBLEM, dev)

    with caplog.at_level(logging.WARNING):
        t = threading.Thread(target=worker)
        t.start()
        t.join(30)
    assert got == {"best": tuned, "top": [tuned], "choose": tuned}
    assert not caplog.records, caplog.text          # no "tuning database unavailable" fallback


# ---- items 9 and 12: only nmgen's files, left unchanged otherwise ---------------------------------
def _foreign(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, score REAL)")
    conn.execute("INSERT INTO results (score) VALUES (1.5)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make,match", [
    (_foreign, "SQLite database of another application"),
    (lambda p: p.write_bytes(os.urandom(5000)), "is not an SQLite database"),
    (lambda p: p.write_text("id,score\n1,1.5\n"), "is not an SQLite database"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(5000)), "not a readable SQLite database"),
])
def test_a_file_that_is_not_an_nmgen_database_is_refused_unchanged(tmp_path, make, match):
    path = tmp_path / "app.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match=match):
        TuningDB(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["app.db"]          # no -wal, -shm or journal left
    line = one_line_error(nmgen("db", "list", "--db", str(path)))
    assert match in line and str(path) in line
    assert path.read_bytes() == before


def test_a_reader_creates_neither_the_file_nor_its_directory(tmp_path):
    from nmgen.db import MissingDatabase
    from nmgen.search.choose import open_db
    path = tmp_path / "zz" / "x.db"
    with pytest.raises(MissingDatabase, match=f"no tuning database at {path}"):
        TuningDB(path, create=False)
    with pytest.raises(MissingDatabase):
        open_db(path, create=False)
    assert list(tmp_path.iterdir()) == []
    TuningDB(path).record(rec("h", 3.0))                      # a writer creates it; then a reader reads it
    assert TuningDB(path, create=False).best(P, "dev", "tc")["median_us"] == 3.0


def test_memory_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    # sqlite's ':memory:' as a path would be a file of that name in the working directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseError, match="':memory:' would be a file of that name here"):
        TuningDB(":memory:")
    monkeypatch.setenv("NMGEN_DB", ":memory:")
    with pytest.raises(DatabaseError, match="':memory:'"):
        TuningDB()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(DatabaseError, match="is a directory"):
        TuningDB(tmp_path)


def test_a_database_of_an_earlier_nmgen_is_recognised_and_stamped(tmp_path):
    import sqlite_utils
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)                # what nmgen wrote before the application id
    migrations.apply(old)
    old.enable_wal()
    r = {**rec("h", 4.0), "measured_at": "2026-11-20T10:00:00+0000"}
    old["results"].insert(r)
    old.close()
    assert sqlite3.connect(path).execute("PRAGMA application_id").fetchone()[0] == 0
    db = TuningDB(path)
    assert db.best(P, "dev", "tc")["median_us"] == 4.0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TuningDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match=rf"written by a newer nmgen \(schema {SCHEMA_VERSION + 1}, this nmgen "
                                            rf"knows {SCHEMA_VERSION}\); upgrade nmgen or use another --db"):
        TuningDB(path)
    before = path.read_bytes()
    assert "newer nmgen" in one_line_error(nmgen("db", "import", os.devnull, "--db", str(path)))
    assert path.read_bytes() == before


def test_a_newer_migration_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TuningDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('nmgen.db', 'm0002_future', '2027-01-01')")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match=rf"newer nmgen \(schema {SCHEMA_VERSION + 1}, this nmgen knows"):
        TuningDB(path)


def test_a_renamed_column_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TuningDB(path).record(rec("h", 3.0))
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE results RENAME COLUMN median_us TO median")
    conn.close()
    with pytest.raises(DatabaseError, match="missing median_us; unknown median"):
        TuningDB(path)
    assert "other columns" in one_line_error(nmgen("db", "list", "--db", str(path)))


def test_a_read_only_database_is_read_but_not_written(tmp_path, monkeypatch):
    path = tmp_path / "t.db"
    db = TuningDB(path)
    db.record(rec("h", 3.0))
    db.close()                                       # its -wal and -shm files go with it
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK and str(p).startswith(
        str(tmp_path)) else real_access(p, mode, **kw))       # what a non-root user sees for a 0444 file
    db = TuningDB(path)
    assert db.readonly and db.best(P, "dev", "tc")["median_us"] == 3.0
    with pytest.raises(DatabaseError, match="is read-only"):
        db.record(rec("g", 2.0))
    assert [r["schedule_hash"] for r in db.rows()] == ["h"]


# ---- item 10: records are checked on the way in and out -------------------------------------------
def test_export_import_merges(tmp_path):
    a, b = TuningDB(tmp_path / "a.db"), TuningDB(tmp_path / "b.db")
    a.record(rec("x", 5.0))
    a.record(rec("y", 7.0, problem="q"))
    b.record(rec("x", 6.0))
    buf = io.StringIO()
    assert a.export(buf) == 2
    buf.seek(0)
    assert b.import_(buf) == 2
    assert b.best(P, "dev", "tc")["median_us"] == 5.0 and b.best(Q, "dev", "tc") is not None
    with pytest.raises(RecordError, match="line 1 is not JSON"):
        b.import_(io.StringIO("{broken\n"))


def test_import_names_every_bad_line_and_imports_nothing(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    lines = [rec("good", 3.0),                                      # 1
             {**rec("a", 3.0), "median_us": "fast"},                # 2
             [1],                                                   # 3
             rec("b", 3.0, schedule=SCHEDULE.replace(stages=99)),   # 4
             {**rec("c", 3.0), "status": "great"},                  # 5
             "text",                                                # 6
             {**rec("d", 3.0), "schedule": "{not json"},            # 7
             {**rec("e", 3.0), "registers": 3.5},                   # 8
             {**rec("f", 3.0), "problem_key": "64x64x64"},          # 9
             {**rec("g", 3.0), "colour": "red"},                    # 10
             {**rec("h", 3.0), "model_us": float("inf")}]           # 11: fine, the model's "does not fit"
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    with pytest.raises(RecordError) as e:
        db.import_(io.StringIO(text))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("9 bad line(s), nothing imported")
    for part in ("line 2: median_us='fast' must be a number", "line 3 is a JSON list, not a record object",
                 "line 4: schedule ", "stages=99 must be between 2 and 8", "line 5: status='great' is not one of",
                 "line 6 is a JSON str", "and 4 more bad lines"):
        assert part in msg, msg
    assert db.rows() == []                                          # all or nothing
    with pytest.raises(RecordError) as e:
        db.import_(io.StringIO("\n".join(json.dumps(x) for x in lines[6:]) + "\n"))
    for part in ("line 1: schedule: schedule is not valid JSON", "line 2: registers=3.5 must be an integer",
                 "line 3: problem_key='64x64x64' is not a problem key", "line 4: unknown field(s) colour"):
        assert part in str(e.value), str(e.value)


def test_an_invalid_record_is_skipped_on_read_for_the_next_valid_one(tmp_path, caplog):
    from nmgen.search.choose import recorded_best, recorded_top
    from nmgen.toolchain import toolchain_key
    dev = for_arch("sm_86")
    path = tmp_path / "t.db"
    db = TuningDB(path)
    keys = {"device_key": dev.key(), "toolchain_key": toolchain_key(dev.arch, dev.driver)}
    good = SCHEDULE.replace(stages=2)
    db.record({**rec("good", 9.0, schedule=good), **keys})
    big = SCHEDULE.replace(stages=6, k_windows=16)     # fits an H100's shared memory, not an RTX 3090's
    db.record({**rec("big", 2.0, schedule=big), **keys})
    conn = sqlite3.connect(path)                        # written outside nmgen, past its checks
    for h, us, s in (("stages", 1.0, SCHEDULE.replace(stages=99).to_json()), ("text", "fast", good.to_json()),
                     ("json", 0.5, "{broken")):
        conn.execute("INSERT INTO results (problem_key, schedule_hash, device_key, toolchain_key, status, "
                     "median_us, schedule) VALUES (?, ?, ?, ?, 'ok', ?, ?)", (P, h, keys["device_key"],
                                                                              keys["toolchain_key"], us, s))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="nmgen.db"):
        assert db.best(P, keys["device_key"], keys["toolchain_key"])["schedule_hash"] == "big"
        assert recorded_best(PROBLEM, dev, db) == good
        assert recorded_top(PROBLEM, dev, db, 3) == [good]
        assert [r["schedule_hash"] for r in db.rows(P)] == ["big", "good"]
    text = caplog.text
    for h in ("stages", "text", "json", "big"):
        assert f"tuning database {path}: ignoring the record of {P}, schedule {h} on {dev.key()}" in text, text
    assert "stages=99 must be between 2 and 8" in text and "median_us='fast' must be a number" in text
    assert "RTX 3090 (typical) allows 99.0 KB" in text
    assert "no tuning record" not in text
    r = nmgen("db", "list", "--db", str(path))          # and the CLI still lists it
    assert r.returncode == 0 and "5 records" in r.stdout and "best 2.0 us" in r.stdout, r.stdout + r.stderr


def test_a_wgmma_record_of_a_hopper_gpu_is_read_back(tmp_path, caplog):
    """Records are checked against the GPUs nmgen targets taken together: a warpgroup (wgmma)
    schedule, which only sm_90 runs, is valid (the H200 bench of 2026-11-30 ignored every wgmma
    record of a problem, then found none that ran). On an sm_80 it is still not chosen."""
    from nmgen.search.choose import recorded_best
    from nmgen.toolchain import toolchain_key
    p = Problem(512, 4096, 11008, Pattern(8, 32, 32), "bf16", "col")
    s = Schedule(block_m=128, block_n=256, warp_m=64, warp_n=256, thread_m=0, thread_n=0, k_windows=4, stages=4,
                 a_pad=8, wgmma=1)
    db = TuningDB(tmp_path / "t.db")
    for arch in ("sm_90", "sm_80"):
        dev = for_arch(arch)
        db.record({**rec("w" + arch, 70.0, problem=p.key(), schedule=s), "device_key": dev.key(),
                   "toolchain_key": toolchain_key(dev.arch, dev.driver)})
    h100, a100 = for_arch("sm_90"), for_arch("sm_80")
    with caplog.at_level(logging.WARNING, logger="nmgen.db"):
        assert recorded_best(p, h100, db) == s
        assert recorded_best(p, a100, db) is None
    assert f"ignoring the record of {p.key()}, schedule wsm_90" not in caplog.text


def test_lookup_is_well_under_a_millisecond(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    db.record_many(rec(f"h{i}", float(i + 1), problem=f"{64 * (i % 50 + 1)}x64x64:2:4:1:f32") for i in range(5000))
    t0 = time.perf_counter()
    for _ in range(200):
        db.best("512x64x64:2:4:1:f32", "dev", "tc")
    assert (time.perf_counter() - t0) / 200 < 1e-3


# ---- item 8: export never destroys a file ---------------------------------------------------------
def test_export_onto_the_database_itself_is_refused(tmp_path):
    path = tmp_path / "t.db"
    TuningDB(path).record(rec("h", 3.0))
    before = path.read_bytes()
    for out in (str(path), str(tmp_path / "." / "t.db"), str(path) + "-wal"):
        line = one_line_error(nmgen("db", "export", "--db", str(path), "-o", out, "--force"))
        assert "is the tuning database itself" in line, line
    assert path.read_bytes() == before
    assert TuningDB(path).best(P, "dev", "tc")["median_us"] == 3.0


def test_an_export_that_fails_midway_leaves_the_old_output(tmp_path, monkeypatch, capsys):
    from nmgen.cli import main
    path, out = tmp_path / "t.db", tmp_path / "x.jsonl"
    TuningDB(path).record(rec("h", 3.0))
    out.write_text("the previous export\n")

    def broken(self, f):
        f.write("{half a line")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(TuningDB, "export", broken)
        assert main(["db", "export", "--db", str(path), "-o", str(out), "--force"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_text() == "the previous export\n"
    assert [f for f in os.listdir(tmp_path) if not f.startswith("t.db")] == ["x.jsonl"]   # no temporary left
    assert main(["db", "export", "--db", str(path), "-o", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["schedule_hash"] == "h"


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    from nmgen.db import default_path
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "x.db"))
    assert default_path() == tmp_path / "x.db"
    monkeypatch.delenv("NMGEN_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "nmgen" / "tuning.db"


def test_toolchain_key_follows_the_generator(tmp_path):
    from nmgen import toolchain
    key = toolchain.toolchain_key("sm_90", 13000)
    assert key.startswith("nmgen 0.") and "+g" in key and "|llvm 22." in key and key.endswith("|driver 13000")
    (tmp_path / "lower.py").write_text("x = 1\n")
    before = toolchain.fingerprint([tmp_path])
    (tmp_path / "lower.py").write_text("x = 2\n")
    assert toolchain.fingerprint([tmp_path]) != before
