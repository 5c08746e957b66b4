import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile

import pytest

from nmgen.cli import main


def nmgen(*args, env=None, prefix=()):
    """Run the CLI in a fresh process; `env` entries override the test's environment (None removes)."""
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return subprocess.run([*prefix, sys.executable, "-m", "nmgen.cli", *args], capture_output=True, text=True,
                          env=full)


def error_line(r) -> str:
    """The one line a bad input ends in: non-zero exit, one non-blank line on stderr, no traceback."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("nmgen") and "error:" in lines[0], lines[0]
    return lines[0]


def unprivileged() -> list[str]:
    """A command prefix that runs without root's bypass of file permissions, so that a read-only
    file is read-only (as it is for every user who runs nmgen)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    pytest.skip("root without setpriv: read-only files cannot be tested")


@pytest.mark.parametrize("args,match", [
    (["ptx", "--shape", "64x64x60", "--pattern", "8:32", "--vector", "32"], "K=60 is not a multiple of the pattern window m=32"),
    (["ptx", "--shape", "64x64x64", "--pattern", "5:4"], "n=5 must be between 1 and m=4"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--vector", "0"], "V=0 must be at least 1"),
    (["ptx", "--shape", "64x64", "--pattern", "2:4"], "not of the form MxNxK"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--schedule", '{"stages": 99}'], "stages=99 must be between"),
    (["ptx", "--shape", "64x64x64", "--pattern", "2:4", "--schedule", '{"warp_m": 48}'], "cannot run"),
    (["check", "--shape", "4096x4096x4096", "--pattern", "2:4", "--interpret"], "would take the CPU interpreter about"),
    (["ptx", "--shape", "64x64x64"], "required: --pattern"),
    (["ptx", "--shape", "64x64x64", "--pattern", "-1:32"], "error: pattern n=-1 must be between 1 and m=32"),
    (["ptx", "--shape", "-64x64x64", "--pattern", "2:4"], "error: shape '-64x64x64': M, N and K must all be at least 1"),
])
def test_bad_input_is_one_clear_line(args, match):
    r = nmgen(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and match in r.stderr, r.stderr


# ---- the guard: every path, file, environment and number input of every command ------------------
@pytest.fixture(scope="module")
def inputs():
    """Bad inputs of every kind, in a directory every user can read (some cases run unprivileged)."""
    from nmgen.db import TuningDB
    root = tempfile.mkdtemp(prefix="nmgen-cli-")
    os.chmod(root, 0o755)
    f = {k: os.path.join(root, k) for k in (
        "dir", "random", "foreign.db", "ro.db", "ro_home", "newer.db", "renamed.db", "t.db", "binary",
        "list.jsonl", "text.jsonl", "fast.jsonl", "stages.jsonl", "bad_v.txt", "bad_shape.txt", "empty.txt",
        "suite_bad.txt", "not_exec", "hangs", "out")}
    os.mkdir(f["dir"])
    os.mkdir(f["out"])
    os.chmod(f["out"], 0o777)                  # where an unprivileged run may write
    with open(os.path.join(f["out"], "ro.txt"), "w") as fh:
        fh.write("keep\n")
    os.chmod(os.path.join(f["out"], "ro.txt"), 0o444)
    with open(f["random"], "wb") as fh:
        fh.write(os.urandom(4096))
    with open(f["binary"], "wb") as fh:
        fh.write(bytes(range(256)) * 8)
    conn = sqlite3.connect(f["foreign.db"])
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, score REAL)")
    conn.commit()
    conn.close()
    good = {"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d", "toolchain_key": "t",
            "status": "ok", "median_us": 3.0, "schedule": '{"stages": 2}'}
    for name in ("ro.db", "newer.db", "renamed.db", "t.db"):
        db = TuningDB(f[name])
        db.record(good)
        db.close()
    os.chmod(f["ro.db"], 0o444)
    conn = sqlite3.connect(f["newer.db"])
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    conn = sqlite3.connect(f["renamed.db"])
    conn.execute("ALTER TABLE results RENAME COLUMN status TO state")
    conn.close()
    os.mkdir(f["ro_home"], 0o555)
    lines = {"list.jsonl": "[1]\n", "text.jsonl": '"text"\n', "fast.jsonl": json.dumps({**good, "median_us": "fast"}),
             "stages.jsonl": json.dumps({**good, "schedule": '{"stages": 99}'}), "bad_v.txt": "64x64x64 2:4 abc\n",
             "bad_shape.txt": "# layers\n64x64x64 2:4 1\n64x64 2:4\n", "empty.txt": "# nothing\n",
             "suite_bad.txt": "64x64x64\nbig\n", "not_exec": "#!/bin/sh\n",
             "hangs": "#!/bin/sh\nexec sleep 60\n"}
    for name, text in lines.items():
        with open(f[name], "w") as fh:
            fh.write(text)
    os.chmod(f["not_exec"], 0o644)
    os.chmod(f["hangs"], 0o755)              # a ptxas that never finishes
    yield f
    os.chmod(f["ro_home"], 0o755)
    shutil.rmtree(root)


SHAPE = ["--shape", "64x64x64", "--pattern", "2:4"]
NO_DB = {"NMGEN_DB": None, "XDG_CACHE_HOME": None}     # the default path, under $HOME


# (case, arguments, environment, unprivileged, what the one line must say); {name} is a file of `inputs`
GUARD = [
    # --db / NMGEN_DB: not a file, not SQLite, not nmgen's, newer, changed, read-only, unwritable home
    ("db dir", ["db", "list", "--db", "{dir}"], {}, False, "is a directory"),
    ("db random", ["db", "list", "--db", "{random}"], {}, False, "is not an SQLite database"),
    ("db foreign", ["db", "show", *SHAPE, "--db", "{foreign.db}"], {}, False, "another application"),
    ("db newer", ["db", "export", "--db", "{newer.db}"], {}, False, "written by a newer nmgen (schema 99"),
    ("db renamed", ["db", "quality", "--db", "{renamed.db}"], {}, False, "missing status; unknown state"),
    ("NMGEN_DB dir", ["db", "list"], {"NMGEN_DB": "{dir}"}, False, "is a directory"),
    ("NMGEN_DB random", ["db", "best", *SHAPE], {"NMGEN_DB": "{random}"}, False, "is not an SQLite database"),
    ("db import into read-only", ["db", "import", os.devnull, "--db", "{ro.db}"], {}, True, "is read-only"),
    ("search read-only db", ["search", *SHAPE, "--db", "{ro.db}"], {}, True, "is read-only"),
    ("bench read-only db", ["bench", "--db", "{ro.db}"], {}, True, "is read-only"),
    ("db import unwritable home", ["db", "import", os.devnull], {**NO_DB, "HOME": "{ro_home}"}, True,
     "{ro_home} is not a writable directory; give a writable --db or NMGEN_DB"),
    ("db parent is a file", ["db", "import", os.devnull, "--db", "{random}/t.db"], {}, False,
     "cannot create the tuning database {random}/t.db: {random} is not a directory"),
    ("db list missing", ["db", "list", "--db", "{random}/t.db"], {}, False, "no tuning database at {random}/t.db"),
    ("search db dir", ["search", *SHAPE, "--db", "{dir}"], {}, False, "is a directory"),
    ("bench db random", ["bench", "--db", "{random}"], {}, False, "is not an SQLite database"),
    # outputs
    ("ptx -o dir", ["ptx", *SHAPE, "-o", "{dir}"], {}, False, "argument -o/--output: {dir}: it is a directory"),
    ("ptx -o no dir", ["ptx", *SHAPE, "-o", "/no/such/dir/k.ptx"], {}, False, "/no/such/dir/k.ptx: the directory /no/such/dir does not exist"),
    ("export -o no dir", ["db", "export", "-o", "/no/such/dir/x"], {}, False, "/no/such/dir/x: the directory /no/such/dir does not exist"),
    ("ptx -o under a file", ["ptx", *SHAPE, "-o", "{random}/k.ptx"], {}, False, "{random}/k.ptx: {random} is not a directory"),
    ("export -o db", ["db", "export", "--db", "{t.db}", "-o", "{t.db}", "--force"], {}, False,
     "is the tuning database itself"),
    ("export -o NMGEN_DB", ["db", "export", "-o", "{t.db}", "--force"], {"NMGEN_DB": "{t.db}"}, False,
     "is the tuning database itself"),
    ("export -o read-only", ["db", "export", "-o", "{out}/ro.txt"], {"NMGEN_DB": os.devnull}, True,
     "{out}/ro.txt: it is read-only"),
    ("export -o unwritable dir", ["db", "export", "-o", "{ro_home}/x"], {"NMGEN_DB": os.devnull}, True,
     "{ro_home}/x: no permission to create files in {ro_home}"),
    ("quality --json dir", ["db", "quality", "--json", "{dir}"], {}, False, "argument --json: {dir}: it is a directory"),
    ("bench --json dir", ["bench", "--json", "{dir}"], {}, False, "argument --json: {dir}: it is a directory"),
    ("bench --markdown no dir", ["bench", "--markdown", "/no/such/dir/x.md"], {}, False, "does not exist"),
    ("bench --plot dir", ["bench", "--plot", "{dir}"], {}, False, "argument --plot: {dir}: it is a directory"),
    ("bench --plot txt", ["bench", "--plot", "{dir}/x.txt"], {}, False, "--plot"),
    # inputs
    ("import list", ["db", "import", "{list.jsonl}"], {}, False, "line 1 is a JSON list, not a record object"),
    ("import text", ["db", "import", "{text.jsonl}"], {}, False, "line 1 is a JSON str, not a record object"),
    ("import fast", ["db", "import", "{fast.jsonl}"], {}, False, "line 1: median_us='fast' must be a number"),
    ("import stages", ["db", "import", "{stages.jsonl}"], {}, False, "line 1: schedule 128x128"),
    ("import binary", ["db", "import", "{binary}"], {}, False, "is not a UTF-8 text file"),
    ("import the db", ["db", "import", "{t.db}", "--db", "{t.db}"], {}, False, "is not a"),
    ("import dir", ["db", "import", "{dir}"], {}, False, "is a directory"),
    ("import missing", ["db", "import", "/no/such.jsonl"], {}, False, "/no/such.jsonl does not exist"),
    ("shapes bad V", ["search", "--shapes", "{bad_v.txt}", "--dry-run"], {}, False, ":1: vector length V='abc' is not an integer"),
    ("shapes bad shape", ["search", "--shapes", "{bad_shape.txt}"], {}, False, ":3: shape '64x64' is not of the form"),
    ("shapes binary", ["search", "--shapes", "{binary}", "--dry-run"], {}, False, "is not a UTF-8 text file"),
    ("shapes random", ["search", "--shapes", "{random}", "--dry-run"], {}, False, "is not a"),
    ("shapes dir", ["search", "--shapes", "{dir}"], {}, False, "--shapes {dir} is a directory"),
    ("shapes empty", ["search", "--shapes", "{empty.txt}"], {}, False, "lists no problems"),
    ("shapes and shape", ["search", "--shape", "128x128x128", "--pattern", "2:4", "--shapes", "{bad_v.txt}",
                          "--dry-run"], {}, False,
     "--shape 128x128x128 --pattern 2:4 and --shapes {bad_v.txt} both name problems; give one problem with "
     "--shape/--pattern/--vector or a file of them with --shapes (V on each line), not both"),
    ("shapes and vector", ["search", "--vector", "16", "--shapes", "{bad_v.txt}", "--dry-run"], {}, False,
     "--vector 16 and --shapes {bad_v.txt} both name problems"),
    ("shapes missing", ["search", "--shapes", "/no/such/shapes.txt"], {}, False, "/no/such/shapes.txt does not exist"),
    ("suite bogus", ["bench", "--suite", "bogus"], {}, False, "--suite 'bogus' is neither paper6, decode, odd"),
    ("suite dir", ["bench", "--suite", "{dir}"], {}, False, "--suite {dir} is a directory"),
    ("suite binary", ["bench", "--suite", "{binary}"], {}, False, "is not a UTF-8 text file"),
    ("suite bad line", ["bench", "--suite", "{suite_bad.txt}"], {}, False, "shape 'big' is not of the form"),
    ("suite empty", ["bench", "--suite", "{empty.txt}"], {}, False, "lists no shapes"),
    ("schedule missing", ["ptx", *SHAPE, "--schedule", "/no/such/s.json"], {}, False, "--schedule /no/such/s.json does not exist"),
    ("schedule missing .json", ["ptx", *SHAPE, "--schedule", "s.json"], {}, False, "--schedule s.json does not exist"),
    ("schedule dir", ["ptx", *SHAPE, "--schedule", "{dir}"], {}, False, "is a directory"),
    ("schedule binary", ["ptx", *SHAPE, "--schedule", "{binary}"], {}, False, "is not a UTF-8 text file"),
    ("schedule not JSON file", ["ptx", *SHAPE, "--schedule", "{bad_v.txt}"], {}, False, "bad_v.txt is not valid JSON"),
    ("check schedule missing", ["check", *SHAPE, "--interpret", "--schedule", "/no/such/s.json"], {}, False,
     "does not exist"),
    # NMGEN_PTXAS
    ("ptxas missing", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "/no/such/ptxas"}, False,
     "NMGEN_PTXAS=/no/such/ptxas does not exist"),
    ("ptxas fails silently", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "/bin/false"}, False,
     "error: ptxas at /bin/false exited with status 1 and printed nothing: is NMGEN_PTXAS a ptxas?"),
    ("ptxas no cubin", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "/bin/true"}, False, "wrote no cubin"),
    ("ptxas not executable", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "{not_exec}"}, False, "is not executable"),
    ("ptxas dir", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "{dir}"}, False, "does not exist (or is not a file)"),
    ("ptxas hangs", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS": "{hangs}", "NMGEN_PTXAS_TIMEOUT": "1"}, False,
     "did not finish in 1 s and was stopped"),
    ("ptxas timeout bad", ["ptx", *SHAPE, "--resources"], {"NMGEN_PTXAS_TIMEOUT": "0"}, False,
     "NMGEN_PTXAS_TIMEOUT='0' is not a positive number of seconds"),
    ("search ptxas", ["search", *SHAPE, "--dry-run"], {"NMGEN_PTXAS": "/bin/true"}, False, "is not CUDA's ptxas"),
    ("db show bad pattern, no db", ["db", "show", "--shape", "64x64x64", "--pattern", "8:"], {"NMGEN_DB": "/no/such.db"},
     False, "pattern '8:' is not of the form n:m"),
    ("search empty space", ["search", "--shape", "64x64x4096", "--pattern", "512:512", "--dry-run"], {}, False,
     "no schedule of the search space fits 64x64x4096 512:512x1"),
    ("ptx no default", ["ptx", "--shape", "64x64x4096", "--pattern", "512:512"], {}, False,
     "give a schedule that does (--schedule / schedule=, a smaller block tile"),
    ("bench ptxas", ["bench"], {"NMGEN_PTXAS": "/no/such/ptxas"}, False, "does not exist"),
    # numbers, checked the same way by every command, before any GPU is asked for
    ("topk 0", ["search", *SHAPE, "--dry-run", "--topk", "0"], {}, False, "argument --topk: 0 must be at least 1"),
    ("db empty", ["db", "list", "--db", ""], {}, False, "argument --db: an empty path"),
    ("schedule empty", ["ptx", *SHAPE, "--schedule", ""], {}, False, "--schedule is empty: give a JSON object"),
    ("topk -3", ["search", *SHAPE, "--topk", "-3"], {}, False, "argument --topk: -3 must be at least 1"),
    ("topk abc", ["search", *SHAPE, "--topk", "abc"], {}, False, "argument --topk: 'abc' is not an integer"),
    ("budget -1", ["search", *SHAPE, "--budget", "-1"], {}, False, "argument --budget: -1 must be at least 1"),
    ("reps 0", ["search", *SHAPE, "--reps", "0"], {}, False, "argument --reps: 0 must be at least 1"),
    ("refine -1", ["search", *SHAPE, "--refine", "-1"], {}, False, "argument --refine: -1 must be at least 0"),
    ("bench reps", ["bench", "--reps", "5"], {}, False, "argument --reps: 5 must be at least 20"),
    ("bench candidates", ["bench", "--candidates", "0"], {}, False, "argument --candidates: 0 must be at least 1"),
    ("bench tune-topk", ["bench", "--tune-topk", "-1"], {}, False, "argument --tune-topk: -1 must be at least 1"),
    ("bench patterns", ["bench", "--patterns", "5:4"], {}, False, "--suite paper6 shape 256x2048x2048 with pattern 5:4:"),
    ("bench patterns empty", ["bench", "--patterns", ","], {}, False, "lists no pattern"),
    ("bench vector", ["bench", "--vector", "0"], {}, False, "with pattern 16:32 and --vector 0: vector length V=0 must"),
    # dtypes: unknown, C stored as TF32, a tensor-core dtype with a V no mma tile fits inside
    ("dtype bogus", ["ptx", *SHAPE, "--dtype", "bogus"], {}, False,
     "argument --dtype: 'bogus' is not a dtype; choose fp32 (FFMA), tf32, bf16 or fp16"),
    ("check dtype bogus", ["check", *SHAPE, "--dtype", "bogus"], {}, False, "argument --dtype: 'bogus' is not a dtype"),
    ("out-dtype tf32", ["ptx", *SHAPE, "--out-dtype", "tf32"], {}, False,
     "argument --out-dtype: tf32 is a way of multiplying float32, not a storage type"),
    ("check out-dtype tf32", ["check", *SHAPE, "--interpret", "--out-dtype", "tf32"], {}, False,
     "argument --out-dtype: tf32 is a way"),
    ("dtype bf16 vector 4", ["check", *SHAPE, "--dtype", "bf16", "--vector", "4"], {}, False,
     "--dtype bf16 multiplies on the tensor cores, whose 8-column mma tiles must each lie inside one vector of "
     "columns sharing kept rows: V=4 is no multiple of 8; use --vector 8, 16, 32, ... or --dtype fp32 (the FFMA "
     "path) for V=4"),
    ("ptx fp16 vector 1", ["ptx", *SHAPE, "--dtype", "fp16"], {}, False, "V=1 is no multiple of 8"),
    ("search tf32 vector 12", ["search", *SHAPE, "--vector", "12", "--dtype", "tf32", "--dry-run"], {}, False,
     "--dtype tf32 multiplies on the tensor cores"),
    ("shapes bf16 vector 4", ["search", "--shapes", "{bad_shape.txt}", "--dtype", "bf16"], {}, False,
     ":2: --dtype bf16 multiplies on the tensor cores"),
    ("db best dtype bogus", ["db", "best", *SHAPE, "--dtype", "bf32"], {}, False, "'bf32' is not a dtype"),
    ("bench dtype bogus", ["bench", "--dtype", "int8"], {}, False, "argument --dtype: 'int8' is not a dtype"),
    ("bench bf16 vector 4", ["bench", "--dtype", "bf16", "--vector", "4"], {}, False,
     "the FFMA path) for V=4"),
    ("fuzz dtypes bogus", ["fuzz", "--interpret", "--dtypes", "f32,int8"], {}, False,
     "--dtypes 'f32,int8': 'int8' is not a dtype"),
    ("fuzz dtypes empty", ["fuzz", "--interpret", "--dtypes", ","], {}, False, "--dtypes ',' lists no dtype"),
    ("fuzz arrays torch interpreted", ["fuzz", "--interpret", "--arrays", "torch"], {}, False,
     "--arrays torch with --interpret: the interpreter runs numpy arrays only"),
    ("schedule cannot run", ["ptx", *SHAPE, "--schedule", '{"warp_m": 48}'], {}, False,
     "cannot run 64x64x64 2:4x1 on H100 SXM (typical): warp tile 48x16 does not divide block tile"),
    # a "rows" schedule no weights let run (judged at the shortest list) is refused before "no GPU"
    ("check rows schedule cannot run", ["check", "--shape", "4096x4096x4096", "--pattern", "16:32", "--vector", "32",
                                        "--dtype", "bf16", "--a-major", "col", "--schedule",
                                        '{"block_m": 256, "block_n": 256, "warp_m": 128, "warp_n": 32, '
                                        '"k_windows": 8, "stages": 4, "a_load": "rows"}'], {}, False,
     "rows cannot run 4096x4096x4096 16:32x32 bf16 (A column-major)"),
]


@pytest.mark.parametrize("args,env,unpriv,match", [pytest.param(*c[1:], id=c[0]) for c in GUARD])
def test_every_bad_input_ends_in_one_line(inputs, args, env, unpriv, match):
    def fill(text):
        return re.sub(r"\{([\w.]+)\}", lambda m: inputs[m.group(1)], text)
    r = nmgen(*map(fill, args), env={k: v and fill(v) for k, v in env.items()}, prefix=unprivileged() if unpriv else ())
    line = error_line(r)
    assert fill(match) in line, line
    assert "no GPU" not in line


def test_without_a_gpu_good_arguments_reach_the_gpu_check(tmp_path):
    from nmgen.api import current_device
    if current_device() is not None:
        pytest.skip("there is a GPU here")
    rows = ["check", "--shape", "4096x4096x4096", "--pattern", "16:32", "--vector", "32", "--dtype", "bf16",
            "--a-major", "col", "--schedule", '{"block_m": 128, "block_n": 256, "warp_m": 128, "warp_n": 32, '
            '"k_windows": 2, "stages": 3, "a_load": "rows"}']     # a "rows" schedule that runs: not refused early
    for args in (["bench", "--suite", "odd", "--json", str(tmp_path / "x.json")], ["search", *SHAPE], rows):
        assert "no GPU here" in error_line(nmgen(*args))
    assert not (tmp_path / "x.json").exists()


def test_a_foreign_file_given_to_every_db_command_is_left_unchanged(inputs):
    before = open(inputs["foreign.db"], "rb").read()
    for op in (["list"], ["best", *SHAPE], ["export"], ["import", os.devnull], ["quality"]):
        assert "another application" in error_line(nmgen("db", *op, "--db", inputs["foreign.db"]))
    assert open(inputs["foreign.db"], "rb").read() == before


# ---- item 12: an unwritable cache does not stop ptx/compile ----------------------------------------
def test_ptx_works_when_the_cache_directory_cannot_be_written(inputs):
    from pathlib import Path
    out = Path(inputs["out"]) / "k.ptx"
    r = nmgen("ptx", *SHAPE, "-o", str(out), env={**NO_DB, "HOME": inputs["ro_home"]}, prefix=unprivileged())
    assert r.returncode == 0, r.stderr
    assert ".visible .entry" in out.read_text()
    assert not r.stderr.strip()                    # the database is only read: a missing one has no records
    assert os.listdir(inputs["ro_home"]) == []


def test_reading_a_read_only_database_works(inputs):
    folder = os.path.dirname(inputs["ro.db"])
    before = sorted(os.listdir(folder)), open(inputs["ro.db"], "rb").read()
    r = nmgen("db", "list", "--db", inputs["ro.db"], prefix=unprivileged())
    assert r.returncode == 0 and "1 records" in r.stdout and not r.stderr, r.stderr
    assert (sorted(os.listdir(folder)), open(inputs["ro.db"], "rb").read()) == before


# ---- item 11: the tests never touch the user's cache -----------------------------------------------
def test_the_tests_use_a_private_database_and_never_the_home_cache(tmp_path, private_tuning_db):
    from nmgen.db import default_path
    home = tmp_path / "home"
    home.mkdir()
    assert default_path() == private_tuning_db and not str(default_path()).startswith(os.path.expanduser("~"))
    r = nmgen("ptx", *SHAPE, env={"HOME": str(home)})        # opens the default database (NMGEN_DB: this test's)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert list(home.iterdir()) == []                         # nothing under $HOME/.cache
    assert not private_tuning_db.exists()                     # and ptx only reads: nothing created there either


# ---- item 14: options read as given ----------------------------------------------------------------
def test_search_dry_run_json_prints_only_json(tmp_path):
    r = nmgen("search", *SHAPE, "--dry-run", "--topk", "2", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data) == 2 and data[0]["problem"]["M"] == 64 and data[0]["model_us"] <= data[1]["model_us"]
    assert all(d["spill_bytes"] == 0 and d["registers"] > 0 for d in data)
    assert [d["rank"] for d in data] == [1, 2] and not any(d["kind_leader"] for d in data)
    assert all(d["bound"] and d["arch"] == "sm_90" for d in data)


def test_search_dry_run_json_marks_each_kinds_best():
    """A bf16 problem with A column-major on sm_90: past the best family, the best-predicted schedule of
    the kernel kinds it lacks, rank null and kind_leader true, as the text's "+" rows."""
    r = nmgen("search", "--shape", "256x512x512", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
              "--a-major", "col", "--dry-run", "--topk", "1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data[0]["rank"] == 1 and not data[0]["kind_leader"] and len(data) >= 2
    assert all(d["rank"] is None and d["kind_leader"] for d in data[1:])
    text = nmgen("search", "--shape", "256x512x512", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
                 "--a-major", "col", "--dry-run", "--topk", "1").stdout
    assert text.count("\n  +") == len(data) - 1 and "kernel kind the best families lack" in text


def test_search_dry_run_shows_a_spilling_family_instead_of_stopping(monkeypatch, capsys):
    """A family whose kernel spills (ptxas 13.0 spills 128x256 tiles of 64x64 warp tiles with a tail
    split at 1024x5120x5120, 254 registers without it) is listed with its spills, as the tuner would
    measure it, and the dry run goes on: here ptxas's report is replaced so that every other family
    spills 24 bytes."""
    import dataclasses
    from nmgen.api import Kernel
    real = Kernel.resources.func
    seen = []

    def spilling_every_other(self):
        r = real(self)
        seen.append(self.name)
        return dataclasses.replace(r, spill_stores=12, spill_loads=12) if len(seen) % 2 == 0 else r
    monkeypatch.setattr(Kernel, "resources", property(spilling_every_other))
    assert main(["search", *SHAPE, "--dry-run", "--topk", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+\s+[\d.]+\s", line)]
    assert len(rows) == 3 and [" 24 B  " in row for row in rows] == [False, True, False], rows


def test_search_dry_run_of_a_huge_problem_needs_little_memory():
    # the peak resident size of this process alone: VmHWM belongs to the process's own memory, where
    # ru_maxrss keeps the high-water mark of the process it was forked from (this test's pytest, which
    # may have grown past 2 GiB by then: CI, 2026-12-02, 3.4 GiB reported for a 0.35 GiB dry run)
    code = ("import resource, sys; from nmgen.cli import main; main(['search', '--shape', '4096x100000x100000', "
            "'--pattern', '8:32', '--vector', '32', '--dry-run', '--topk', '1', '--json']); "
            "status = open('/proc/self/status').read() if sys.platform == 'linux' else ''; "
            "print(status.split('VmHWM:')[1].split()[0] if 'VmHWM:' in status "
            "else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stderr.split()[-1]) < 2 * 2**20, r.stderr    # KiB: under 2 GiB (the dense weights: 9 GiB)
    assert len(json.loads(r.stdout)) == 1


def test_random_weights_that_do_not_fit_are_refused_before_allocating(monkeypatch):
    import numpy as np
    from nmgen import bench
    from nmgen.errors import ShapeError
    from nmgen.ir.problem import Pattern, Problem
    monkeypatch.setattr(bench, "available_memory", lambda: 1 << 30)
    with pytest.raises(ShapeError, match=r"need 1\d\.\d GiB of memory and 1\.0 GiB are available"):
        bench.random_nm(Problem(4096, 100000, 100000, Pattern(8, 32, 32)), np.random.default_rng(0))


def test_random_weights_are_drawn_in_slices_as_at_once(monkeypatch):
    import numpy as np
    from nmgen import bench
    from nmgen.ir.problem import Pattern, Problem
    p = Problem(8, 100, 4096, Pattern(3, 8, 5))
    whole = bench.random_nm(p, np.random.default_rng(1))
    monkeypatch.setattr(bench, "KEY_DRAWS", 1000)            # 25 windows a slice
    sliced = bench.random_nm(p, np.random.default_rng(1))
    assert (whole.indices == sliced.indices).all() and (whole.values == sliced.values).all()


def test_export_to_a_device_writes_through_it(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "t.db").record({"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d",
                                        "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"stages": 2}'})
    r = nmgen("db", "export", "--db", str(tmp_path / "t.db"), "-o", os.devnull)
    assert r.returncode == 0 and "exported 1 records" in r.stdout, r.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)                    # still the device, not a file


# ---- a database is created only by a command that writes records ------------------------------------
@pytest.mark.parametrize("op", [["list"], ["best", *SHAPE], ["show", *SHAPE], ["quality"], ["export"]])
def test_a_db_reader_reports_a_missing_database_and_creates_nothing(tmp_path, op):
    path = tmp_path / "zz" / "sub" / "x.db"
    for how in (["--db", str(path)], []):
        line = error_line(nmgen("db", *op, *how, env={"NMGEN_DB": str(path)}))
        assert f"error: no tuning database at {path} (`nmgen search` or `nmgen db import` creates one)" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["ptx", *SHAPE], ["check", *SHAPE, "--interpret"]], ids=["ptx", "check"])
def test_a_lookup_creates_no_database(tmp_path, args):
    r = nmgen(*args, env={"NMGEN_DB": str(tmp_path / "zz" / "sub" / "x.db")})
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_compile_creates_no_database(tmp_path, monkeypatch):
    import nmgen
    monkeypatch.setenv("NMGEN_DB", str(tmp_path / "zz" / "x.db"))
    assert nmgen.compile("64x64x64", pattern="2:4").ptx
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,match", [
    (["search", *SHAPE], "no GPU here"), (["bench", "--suite", "odd"], "no GPU here"),
    (["db", "import", "{bad}"], "1 bad line(s), nothing imported")], ids=["search", "bench", "db import bad"])
def test_a_writer_that_fails_before_writing_creates_no_database(tmp_path, args, match):
    """search and bench without a GPU, and an import of bad lines, fail before any record is
    written: neither the database nor its folder is left behind (the writable check creates nothing)."""
    from nmgen.api import current_device
    if "no GPU" in match and current_device() is not None:
        pytest.skip("there is a GPU here: the command would run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1]\n")
    path = tmp_path / "zz" / "sub" / "x.db"
    line = error_line(nmgen(*[a.replace("{bad}", str(bad)) for a in args], env={"NMGEN_DB": str(path)}))
    assert match in line, line
    assert not (tmp_path / "zz").exists()


def test_db_import_creates_the_database_and_its_folders(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "a.db").record({"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d",
                                        "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"stages": 2}'})
    nmgen("db", "export", "--db", str(tmp_path / "a.db"), "-o", str(tmp_path / "a.jsonl"))
    path = tmp_path / "zz" / "sub" / "x.db"
    r = nmgen("db", "import", str(tmp_path / "a.jsonl"), "--db", str(path))
    assert r.returncode == 0 and "imported 1 records" in r.stdout, r.stderr
    assert path.is_file()
    r = nmgen("db", "import", os.devnull, "--db", str(tmp_path / "yy" / "y.db"))     # nothing to import: no database
    assert r.returncode != 0 and "holds no records" in r.stderr and not (tmp_path / "yy").exists()


# ---- an output file that exists is replaced only with --force ----------------------------------------
OUTPUTS = {"ptx -o": ["ptx", *SHAPE, "-o"], "db export -o": ["db", "export", "-o"],
           "db quality --json": ["db", "quality", "--json"], "bench --json": ["bench", "--json"],
           "bench --markdown": ["bench", "--markdown"], "bench --plot": ["bench", "--plot"],
           "fuzz --json": ["fuzz", "--interpret", "--cases", "1", "--quiet", "--json"]}


@pytest.mark.parametrize("args", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_an_existing_output_file_is_refused_without_force(tmp_path, args):
    mine = tmp_path / "mine.png"
    mine.write_text("keep\n")
    line = error_line(nmgen(*args, str(mine)))
    assert line.endswith(f"error: {mine} already exists; pass --force to replace it, or give another file"), line
    assert mine.read_text() == "keep\n"


@pytest.mark.parametrize("args", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_a_dash_for_an_output_file_is_refused(tmp_path, monkeypatch, args):
    """`-o -` would otherwise write a file named "-" (db import reads "-" as standard input)."""
    monkeypatch.chdir(tmp_path)
    line = error_line(nmgen(*args, "-"))
    assert "'-' is not a file name" in line, line
    assert not (tmp_path / "-").exists()


def test_force_replaces_an_existing_output_file(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep\n")
    r = nmgen("ptx", *SHAPE, "-o", str(mine), "--force")
    assert r.returncode == 0, r.stderr
    assert ".visible .entry" in mine.read_text()


def test_every_output_option_comes_with_force():
    """Every option whose value is a file nmgen writes is declared through add_output_arg, with --force."""
    from nmgen.cli import build_parser
    from nmgen.cli.common import output_file

    def commands(parser, name):
        yield name, parser
        for a in parser._actions:
            if isinstance(a.choices, dict):                  # the sub-commands
                for sub, q in a.choices.items():
                    yield from commands(q, f"{name} {sub}")
    seen = 0
    for name, parser in commands(build_parser(), "nmgen"):
        if any(a.type is output_file for a in parser._actions):
            seen += 1
            assert any(a.option_strings == ["--force"] for a in parser._actions), name
    assert seen == 5                        # ptx, db export, db quality, bench, fuzz


def test_schedule_that_looks_like_json_is_not_taken_for_a_path():
    line = error_line(nmgen("ptx", *SHAPE, "--schedule", '{"stages": 2'))
    assert "--schedule is not valid JSON" in line


def test_ptx_with_resources(tmp_path, capsys):
    out = tmp_path / "k.ptx"
    assert main(["ptx", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "-o", str(out),
                 "--resources"]) == 0
    text = out.read_text()
    assert ".visible .entry nmspmm_17x100x64_8_32_32" in text and "// ptxas sm_90:" in text
    assert "registers" in capsys.readouterr().out
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask          # a new file's mode, not a temp file's


@pytest.mark.parametrize("a_major", ["row", "col"])
def test_check_interpret_passes(a_major):
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "--interpret",
              "--a-major", a_major)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


def test_check_interpret_judges_the_schedule_for_the_arch_asked():
    """--arch with --interpret: the schedule is chosen and judged for that GPU (an A100 has no wgmma),
    and --arch without --interpret is refused (a GPU run uses the GPU's own)."""
    args = ["check", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
            "--a-major", "col", "--interpret"]
    r = nmgen(*args, "--arch", "sm_80")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    wgmma = '{"block_m": 64, "block_n": 64, "warp_m": 64, "warp_n": 64, "wgmma": 1}'
    r = nmgen(*args, "--arch", "sm_80", "--schedule", wgmma)
    assert r.returncode == 2 and "wgmma needs a Hopper GPU" in error_line(r), r.stderr
    assert nmgen(*args, "--schedule", wgmma).returncode == 0                     # sm_90 by default
    r = nmgen(*args[:-1], "--arch", "sm_80")
    assert r.returncode == 2 and "add --interpret, or leave out --arch" in error_line(r), r.stderr


def test_help_lists_the_commands():
    r = nmgen("--help")
    assert r.returncode == 0 and "ptx" in r.stdout and "check" in r.stdout
    bare = nmgen()                       # no command: the list of commands, not only "required"
    assert bare.returncode == 2 and "ptx" in bare.stderr and "fuzz" in bare.stderr and "Traceback" not in bare.stderr


def test_pattern_with_its_vector_as_problems_print_it(tmp_path):
    """--pattern 8:32x32 is 8:32 with V = 32 (what nmgen prints); a --vector that disagrees is refused."""
    out = tmp_path / "k.ptx"
    r = nmgen("ptx", "--shape", "64x64x64", "--pattern", "8:32x32", "--dtype", "bf16", "-o", str(out))
    assert r.returncode == 0 and "nmspmm_64x64x64_8_32_32_bf16" in out.read_text(), r.stderr
    r = nmgen("ptx", "--shape", "64x64x64", "--pattern", "8:32x32", "--vector", "16", "--dtype", "bf16")
    assert r.returncode == 2 and "V=32 but vector=16 was given" in r.stderr, r.stderr


def test_python_m_nmgen_is_the_nmgen_command():
    r = subprocess.run([sys.executable, "-m", "nmgen", "ptx", *SHAPE], capture_output=True, text=True)
    assert r.returncode == 0 and ".visible .entry nmspmm_64x64x64_2_4" in r.stdout, r.stderr
    assert "nmgen ptx: error: argument --pattern" in error_line(
        subprocess.run([sys.executable, "-m", "nmgen", "ptx", "--shape", "64x64x64", "--pattern"],
                       capture_output=True, text=True))


def test_search_dry_run_needs_no_gpu(tmp_path):
    r = nmgen("search", "--shape", "256x2048x2048", "--pattern", "8:32", "--vector", "32", "--dry-run", "--topk", "3",
              "--db", str(tmp_path / "t.db"))
    assert r.returncode == 0, r.stderr
    assert "what model-topk measures first (nothing measured here)" in r.stdout
    ranked = [line for line in r.stdout.splitlines()
              if re.match(r"\s+\d+\s+[\d.]+\s+\w+\s+\d+\s+(-|\d+ B)\s+\d+x\d+ w", line)]
    assert len(ranked) == 3, r.stdout
    assert not (tmp_path / "t.db").exists() or "0 problem" in nmgen("db", "list", "--db", str(tmp_path / "t.db")).stdout


@pytest.mark.parametrize("args,match", [
    (["search", "--pattern", "8:32"], "give --shape and --pattern"),
    (["search", "--shapes", "/nonexistent/shapes.txt"], "/nonexistent/shapes.txt does not exist"),
    (["search", "--shape", "64x64x60", "--pattern", "8:32", "--dry-run"], "K=60 is not a multiple"),
    (["db", "best", "--shape", "64x64x64", "--pattern", "8:32", "--vector", "32"], "no records for"),
    (["db", "import", "/nonexistent.jsonl"], "does not exist"),
])
def test_search_and_db_bad_input(tmp_path, args, match):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "t.db").close()                     # an empty database: no records
    r = nmgen(*args, *(["--db", str(tmp_path / "t.db")] if args[0] == "db" else []))
    assert match in error_line(r)


def test_db_best_of_sizes_recorded_for_another_a_order_names_that_problem(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "t.db").record({"problem_key": "64x64x64:8:32:32:bf16:Acol", "schedule_hash": "h",
                                        "device_key": "d", "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"block_m": 64, "block_n": 64, "warp_m": 64, "warp_n": 32, '
                                                    '"thread_m": 0, "thread_n": 0, "a_pad": 8}'})
    r = nmgen("db", "best", "--shape", "64x64x64", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
              "--db", str(tmp_path / "t.db"))
    assert "this database has 64x64x64:8:32:32:bf16:Acol for these sizes (the key adds :Acol" in error_line(r)


def test_db_quality_of_an_empty_database_says_there_is_nothing_to_judge(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "t.db").close()
    line = error_line(nmgen("db", "quality", "--db", str(tmp_path / "t.db"), "--json", str(tmp_path / "q.json")))
    assert line == f"nmgen db: error: no records to judge in {tmp_path / 't.db'}; run `nmgen search` first"
    assert not (tmp_path / "q.json").exists()


def test_db_import_reads_standard_input(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "a.db").record({"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d",
                                        "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"stages": 2}'})
    exported = nmgen("db", "export", "--db", str(tmp_path / "a.db")).stdout
    r = subprocess.run([sys.executable, "-m", "nmgen", "db", "import", "-", "--db", str(tmp_path / "b.db")],
                       input=exported, capture_output=True, text=True)
    assert r.returncode == 0 and "imported 1 records" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "nmgen", "db", "import", "-", "--db", str(tmp_path / "b.db")],
                       input="[1]\n", capture_output=True, text=True)
    assert "error: standard input: 1 bad line(s), nothing imported: line 1 is a JSON list" in error_line(r)
    r = subprocess.run([sys.executable, "-m", "nmgen", "db", "import", "-", "--db", str(tmp_path / "c.db")],
                       input="\n", capture_output=True, text=True)        # a failed export piped in: no records
    assert r.returncode != 0 and "standard input holds no records; nothing imported" in error_line(r)
    assert not (tmp_path / "c.db").exists()


def test_db_export_import_round_trip(tmp_path):
    from nmgen.db import TuningDB
    TuningDB(tmp_path / "a.db").record({"problem_key": "64x64x64:2:4:1:f32", "schedule_hash": "h", "device_key": "d",
                                        "toolchain_key": "t", "status": "ok", "median_us": 3.0,
                                        "schedule": '{"stages": 2}'})
    r = nmgen("db", "export", "--db", str(tmp_path / "a.db"), "-o", str(tmp_path / "x.jsonl"))
    assert r.returncode == 0, r.stderr
    r = nmgen("db", "import", str(tmp_path / "x.jsonl"), "--db", str(tmp_path / "b.db"))
    assert r.returncode == 0 and "imported 1 records" in r.stdout and ": 1 new or faster" in r.stdout, r.stderr
    assert "1 records" in nmgen("db", "list", "--db", str(tmp_path / "b.db")).stdout
    # the same file again changes nothing, and says so
    r = nmgen("db", "import", str(tmp_path / "x.jsonl"), "--db", str(tmp_path / "b.db"))
    assert r.returncode == 0 and ": 0 new or faster than the record they met, 1 already there" in r.stdout, r.stderr


def test_an_unknown_option_is_reported_by_its_command():
    line = error_line(nmgen("check", *SHAPE, "--resources"))
    assert line == "nmgen check: error: unrecognized arguments: --resources", line


@pytest.mark.parametrize("line,expected", [("64x128x256 8:32 32", (8, 32, 32)), ("64x128x256 8:32x32", (8, 32, 32)),
                                           ("64x128x256 2:4", (2, 4, 1)), ("64x128x256 2:4x1", (2, 4, 1)),
                                           ("64x128x256 8:32X32", (8, 32, 32)), ("64x128x256 8:32x32 32", (8, 32, 32))])
def test_a_shapes_line_takes_the_pattern_as_nmgen_prints_it(line, expected):
    from nmgen.cli.search import _problem_of_line
    p = _problem_of_line(line, "row")
    assert (p.M, p.N, p.K) == (64, 128, 256) and (p.pattern.n, p.pattern.m, p.pattern.vector) == expected


@pytest.mark.parametrize("line", ["64x128x256", "64x128x256 8:32 32 1"])
def test_a_shapes_line_of_another_form_is_refused(line):
    from nmgen.cli.search import _problem_of_line
    from nmgen.errors import NMGenError
    with pytest.raises(NMGenError, match=r"expected `MxNxK n:m V` \(or `MxNxK n:mxV`\)"):
        _problem_of_line(line, "row")
    with pytest.raises(NMGenError, match=r"has vector length V=32 but vector=16 was given"):
        _problem_of_line("64x128x256 8:32x32 16", "row")


def test_bench_takes_a_pattern_with_its_vector_length():
    """--patterns 8:32x16 means V = 16 (bench's V is 32 when neither it nor --vector says otherwise)."""
    from nmgen.bench import problem_of
    assert problem_of((64, 128, 256), "8:32x16", None).pattern.vector == 16
    assert problem_of((64, 128, 256), "8:32", None).pattern.vector == 32
    r = nmgen("bench", "--patterns", "8:32x12", "--dtype", "bf16")
    assert r.returncode == 2 and "V=12 is no multiple of 8" in r.stderr, r.stderr


@pytest.mark.parametrize("second,says", [("--markdown", "--json and --markdown both name {out}"),
                                         ("--plot", "--json and --plot both name {out}"),
                                         ("--db", "--json {out} is the tuning database itself")])
def test_one_file_for_two_outputs_is_refused(tmp_path, second, says):
    """bench would write its JSON after every row, then replace it with the table (or the plot) at
    the end, or write JSON over the tuning database: refused before any work, --force or not."""
    out = tmp_path / "out.json"
    line = error_line(nmgen("bench", "--json", str(out), second, str(out), "--force"))
    assert says.format(out=out) in line, line
    assert not out.exists()


def test_an_output_onto_the_default_database_is_refused(tmp_path):
    db = tmp_path / "tuning.db"
    line = error_line(nmgen("bench", "--json", str(db), "--force", env={"NMGEN_DB": str(db)}))
    assert f"--json {db} is the tuning database itself" in line, line


def test_a_byte_order_mark_in_a_shapes_file_is_read(tmp_path):
    shapes = tmp_path / "shapes.txt"
    shapes.write_bytes(b"\xef\xbb\xbf17x100x64 8:32 8\n")
    r = nmgen("search", "--shapes", str(shapes), "--dry-run", "--json", "--topk", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["problem"]["M"] == 17


def test_ptx_says_where_its_schedule_came_from(tmp_path):
    r = nmgen("ptx", *SHAPE, env={"NMGEN_DB": str(tmp_path / "none.db")})
    assert r.returncode == 0, r.stderr
    assert f"// nmgen: schedule from the performance model's choice (no tuning database at {tmp_path / 'none.db'})" \
        in r.stdout
    r = nmgen("ptx", *SHAPE, "--schedule", '{"stages": 3}')
    assert "// nmgen: schedule from --schedule" in r.stdout
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("command", [["ptx", *SHAPE], ["check", *SHAPE], ["check", *SHAPE, "--interpret"]])
def test_a_missing_db_for_a_lookup_is_named(tmp_path, command):
    line = error_line(nmgen(*command, "--db", str(tmp_path / "missing.db")))
    assert f"no tuning database at {tmp_path / 'missing.db'}" in line, line
    assert not (tmp_path / "missing.db").exists()
    # with --schedule the database is not read (ptx and check alike)
    r = nmgen(*command, "--db", str(tmp_path / "missing.db"), "--schedule", '{"stages": 3}')
    assert "no tuning database" not in r.stderr, r.stderr


def test_dry_run_counts_the_families_the_space_holds():
    r = nmgen("search", "--shape", "1x8x4", "--pattern", "2:4", "--dry-run", "--topk", "100000")
    assert r.returncode == 0, r.stderr
    m = re.search(r"the model's best (\d+) families \(all the space holds\)", r.stdout)
    assert m and int(m.group(1)) < 100000, r.stdout[:400]


def test_an_output_onto_a_symlinked_databases_wal_is_refused(tmp_path):
    """SQLite names its -wal / -shm files after the symlink's target: an output there would be
    deleted (or would clobber the live log) when the database closes."""
    real = tmp_path / "real.db"
    from nmgen.db import TuningDB
    TuningDB(real)
    (tmp_path / "link.db").symlink_to(real)
    for suffix in ("-wal", "-shm"):
        line = error_line(nmgen("ptx", *SHAPE, "--db", str(tmp_path / "link.db"), "-o", f"{real}{suffix}"))
        assert f"is the tuning database itself ({real}{suffix})" in line, line


def test_check_without_a_gpu_judges_a_rows_schedule_on_the_interpreters_weights(tmp_path):
    """17x100x4096 3:4096 (V = 1): any weights' lists exceed shared memory under this schedule, so the
    suggested interpreter line would fail; where the lists fit (V = 16) the line carries the seed
    they were judged with, and --db."""
    base = ["check", "--shape", "17x100x4096", "--pattern", "3:4096", "--schedule", '{"a_load": "rows"}']
    line = error_line(nmgen(*base))
    assert "cannot run" in line and "shared memory" in line and "no GPU" not in line, line
    db = tmp_path / "t.db"
    from nmgen.db import TuningDB
    TuningDB(db)                                    # an existing, empty database
    line = error_line(nmgen(*base, "--vector", "16", "--db", str(db)))
    assert "no GPU here" in line and "--seed " in line and f"--db {db}" in line, line


def test_ptx_states_its_launch_contract():
    """The .entry's parameters are addresses: the comments say which array each is, in order (a split-K
    kernel into a 16-bit C also takes its fp32 workspace and tile counts, zero before and after)."""
    r = nmgen("ptx", "--shape", "64x256x288", "--pattern", "8:32", "--vector", "32", "--dtype", "bf16",
              "--schedule", '{"split_k": 4}')
    assert r.returncode == 0, r.stderr
    params = re.findall(r"// nmgen: param_(\d+) (\w+): (\w+)", r.stdout)
    assert [(int(i), name) for i, name, _ in params] == list(enumerate(["A", "Bv", "Bi", "C", "Work", "Counts"]))
    assert ("4", "Work", "f32") in params and "zero before and after" in r.stdout
    assert r.stdout.count(".param .u64") == len(params)


@pytest.mark.parametrize("option,value,what", [
    ("--shape", "64x64x" + "6" * 5000, "K=666666666666... (5000 digits) is far too large"),
    ("--pattern", "2:" + "4" * 5000, "m=444444444444... (5000 digits) is far too large"),
    ("--schedule", '{"split_k": ' + "4" * 5000 + "}", "--schedule holds a number of over 4300 digits"),
])
def test_numbers_of_thousands_of_digits_are_one_line_errors(option, value, what):
    args = {"--shape": "64x64x64", "--pattern": "2:4", option: value}
    r = nmgen("ptx", *[x for kv in args.items() for x in kv])
    assert r.returncode == 2 and "Traceback" not in r.stderr and what in error_line(r), r.stderr[-500:]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system (Linux has one)")
@pytest.mark.parametrize("command", [("ptx", "--shape", "64x64x64", "--pattern", "2:4"),
                                     ("search", "--shape", "64x64x64", "--pattern", "2:4", "--dry-run")])
def test_standard_output_on_a_full_disk_is_a_one_line_error(command):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nmgen.cli", *command], stdout=full, stderr=subprocess.PIPE,
                           text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"nmgen {command[0]}: error: writing or reading failed: No space left on device"], r.stderr
