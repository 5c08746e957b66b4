import re
import subprocess
import sys

import pytest

from nmgen.cli import main


def nmgen(*args):
    return subprocess.run([sys.executable, "-m", "nmgen.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args,match", [
    (["ptx", "--shape", "64x64x60", "--pattern", "8:32", "--vector", "32"], "K=60 is not a multiple of the pattern window m=32"),
    (["ptx", "--shape", "64x64x64", "--pattern", "5:4"], "n=5 must be between 1 and m=4"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--vector", "0"], "V=0 must be at least 1"),
    (["ptx", "--shape", "64x64", "--pattern", "2:4"], "not of the form MxNxK"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--schedule", '{"stages": 99}'], "stages=99 must be between"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--schedule", '{"warp_m": 48}'], "cannot run"),
    (["check", "--shape", "4096x4096x4096", "--pattern", "2:4", "--interpret"], "too large for the CPU interpreter"),
    (["ptx", "--shape", "64x64x64"], "required: --pattern"),
])
def test_bad_input_is_one_clear_line(args, match):
    r = nmgen(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and match in r.stderr, r.stderr


def test_ptx_with_resources(tmp_path, capsys):
    out = tmp_path / "k.ptx"
    assert main(["ptx", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "-o", str(out),
                 "--resources"]) == 0
    text = out.read_text()
    assert ".visible .entry nmspmm_17x100x64_8_32_32" in text and "// ptxas sm_90:" in text
    assert "registers" in capsys.readouterr().out


@pytest.mark.parametrize("a_major", ["row", "col"])
def test_check_interpret_passes(a_major):
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "--interpret",
              "--a-major", a_major)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


def test_help_lists_the_commands():
    r = nmgen("--help")
    assert r.returncode == 0 and "ptx" in r.stdout and "check" in r.stdout


def test_search_dry_run_needs_no_gpu(tmp_path):
    r = nmgen("search", "--shape", "256x2048x2048", "--pattern", "8:32", "--vector", "32", "--dry-run", "--topk", "3",
              "--db", str(tmp_path / "t.db"))
    assert r.returncode == 0, r.stderr
    assert "model ranking, nothing measured" in r.stdout
    ranked = [line for line in r.stdout.splitlines() if re.match(r"\s+\d+\s+[\d.]+\s+\w+\s+\d+\s+\d+x\d+ w", line)]
    assert len(ranked) == 3, r.stdout
    assert not (tmp_path / "t.db").exists() or "0 problem" in nmgen("db", "list", "--db", str(tmp_path / "t.db")).stdout


@pytest.mark.parametrize("args,match", [
    (["search", "--pattern", "8:32"], "give --shape and --pattern"),
    (["search", "--shapes", "/nonexistent/shapes.txt"], "cannot read --shapes"),
    (["search", "--shape", "64x64x60", "--pattern", "8:32", "--dry-run"], "K=60 is not a multiple"),
    (["db", "best", "--shape", "64x64x64", "--pattern", "8:32", "--vector", "32"], "no records for"),
    (["db", "import", "/nonexistent.jsonl"], "cannot read"),
])
def test_search_and_db_bad_input(tmp_path, args, match):
    r = nmgen(*args, *(["--db", str(tmp_path / "t.db")] if args[0] == "db" else []))
    assert r.returncode != 0 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_db_export_import_round_trip(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "a.db").record({"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d",
                                        "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"stages": 2}'})
    r = nmgen("db", "export", "--db", str(tmp_path / "a.db"), "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 0, r.stderr
    r = nmgen("db", "import", str(tmp_path / "x.jsonl"), "--db", str(tmp_path / "b.db"))
    assert r.returncode == 0 and "imported 1 records" in r.stdout, r.stderr
    assert "1 records" in nmgen("db", "list", "--db", str(tmp_path / "b.db")).stdout


def test_the_tests_use_a_private_database_and_never_the_home_cache(tmp_path, private_tuning_db):
    import os
    from nmgen.db import default_path
    home = tmp_path / "home"
    home.mkdir()
    assert default_path() == private_tuning_db and not str(default_path()).startswith(os.path.expanduser("~"))
    r = subprocess.run([sys.executable, "-m", "nmgen.cli", "ptx", "--shape", "64x64x64", "--pattern", "2:4"],
                       capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
    assert r.returncode == 0 and not r.stderr, r.stderr      # ptx opens the default database (NMGEN_DB: this test's)
    assert list(home.iterdir()) == []                         # nothing under $HOME/.cache
    assert private_tuning_db.exists()
