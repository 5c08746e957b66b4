"""nmgen.torch without torch (CI has none): importing it says how to install it, and the rest of
nmgen never imports torch."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_import_without_torch_says_how_to_install():
    r = _run("import sys; sys.modules['torch'] = None\n"
             "try:\n    import nmgen.torch\nexcept ImportError as e:\n    print('MESSAGE', e)\n"
             "else:\n    print('imported')")
    assert r.returncode == 0, r.stderr
    assert "MESSAGE" in r.stdout and "pip install -e '.[torch]' in an nmgen checkout" in r.stdout, r.stdout


def test_core_never_imports_torch():
    r = _run("import sys; import nmgen, nmgen.api, nmgen.prepared, nmgen.runtime.launch, nmgen.format, "
             "nmgen.reference, nmgen.cli\n"
             "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    assert r.returncode == 0, r.stderr


def test_bench_host_time_without_torch_says_how_to_install():
    """`nmgen bench --host-time` measures the torch op: without torch it ends in one line naming the
    install (before any GPU is asked for, so this holds on a machine with a GPU too)."""
    r = _run("import runpy, sys; sys.modules['torch'] = None\n"
             "sys.argv = ['nmgen', 'bench', '--host-time', '--suite', 'decode', '--patterns', '8:32']\n"
             "runpy.run_module('nmgen.cli', run_name='__main__')")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--host-time measures nmgen's torch op and needs torch" in lines[0], lines[0]
    assert "pip install -e '.[torch]' in an nmgen checkout" in lines[0], lines[0]
