"""The install layout: every subpackage listed, nmgen.ir free of llvmlite and cuda."""
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_subpackage_is_listed():
    cfg = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    found = set()
    for pkg, folder in dirs.items():
        for here, subdirs, files in os.walk(os.path.join(ROOT, folder)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            if "__init__.py" in files:
                rel = os.path.relpath(here, os.path.join(ROOT, folder))
                name = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
                # a mapped folder nested in another mapping (nmgen/ holds none) is listed once
                found.add(name)
    assert found == listed, f"pyproject packages {sorted(listed)} != folders {sorted(found)}"


def test_ir_imports_neither_llvmlite_nor_cuda():
    code = ("import sys, nmgen.ir, nmgen.format, nmgen.search.heuristic; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('llvmlite', 'cuda')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_import_needs_no_gpu():
    r = subprocess.run([sys.executable, "-c", "import nmgen; print(nmgen.__version__)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
