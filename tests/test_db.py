import io
import multiprocessing as mp
import sqlite3
import time

import pytest

from nmgen.db import SCHEMA_VERSION, TuningDB
from nmgen.db.store import migrations


def rec(h, us=None, status="ok", problem="p"):
    r = {"problem_key": problem, "schedule_hash": h, "device_key": "dev", "toolchain_key": "tc", "status": status}
    if us is not None:
        r["median_us"] = us
    return r


def test_keep_best(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    db.record(rec("a", 10.0))
    db.record(rec("a", 12.0))                       # slower: kept the 10
    db.record(rec("a", status="wrong_result"))       # a failure never replaces a success
    assert db.best("p", "dev", "tc")["median_us"] == 10.0
    db.record(rec("a", 8.0))
    db.record(rec("b", 9.0))
    assert db.best("p", "dev", "tc")["schedule_hash"] == "a"
    assert db.recorded("p", "dev", "tc") == {"a": "ok", "b": "ok"}
    assert db.best("p", "other device", "tc") is None
    with pytest.raises(ValueError, match="status"):
        db.record(rec("c", status="fast"))


def test_schema_version_and_migration_of_an_old_file(tmp_path):
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()                    # an empty file from before any migration
    db = TuningDB(path)
    assert db.schema_version() == SCHEMA_VERSION == len(migrations._migrations)
    assert "results" in db.db.table_names()
    assert TuningDB(path).schema_version() == SCHEMA_VERSION   # re-opening applies nothing twice


def _writer(path, who, n):
    db = TuningDB(path)
    for i in range(n):
        db.record(rec(f"{who}-{i}", float(i)))


def test_four_processes_write_at_once(tmp_path):
    path = str(tmp_path / "c.db")
    TuningDB(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(TuningDB(path).recorded("p", "dev", "tc")) == 600


def test_export_import_merges(tmp_path):
    a, b = TuningDB(tmp_path / "a.db"), TuningDB(tmp_path / "b.db")
    a.record(rec("x", 5.0))
    a.record(rec("y", 7.0, problem="q"))
    b.record(rec("x", 6.0))
    buf = io.StringIO()
    assert a.export(buf) == 2
    buf.seek(0)
    assert b.import_(buf) == 2
    assert b.best("p", "dev", "tc")["median_us"] == 5.0 and b.best("q", "dev", "tc") is not None
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        b.import_(io.StringIO("{broken\n"))


def test_lookup_is_well_under_a_millisecond(tmp_path):
    db = TuningDB(tmp_path / "t.db")
    db.record_many(rec(f"h{i}", float(i), problem=f"p{i % 50}") for i in range(5000))
    t0 = time.perf_counter()
    for _ in range(200):
        db.best("p7", "dev", "tc")
    assert (time.perf_counter() - t0) / 200 < 1e-3


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
