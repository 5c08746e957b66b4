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


def test_check_interpret_passes():
    r = nmgen("check", "--shape", "17x100x64", "--pattern", "8:32", "--vector", "32", "--interpret")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


def test_help_lists_the_commands():
    r = nmgen("--help")
    assert r.returncode == 0 and "ptx" in r.stdout and "check" in r.stdout
