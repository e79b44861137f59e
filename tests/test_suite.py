"""The suite's own rules (issue 24): every test has a time bound."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_test_has_a_time_bound(request, tmp_path):
    """pyproject.toml gives every test pytest-timeout's bound; a test that hangs fails with a stack dump,
    inside an xdist worker too, instead of stopping the suite."""
    assert int(request.config.getini("timeout")) >= 300 and request.config.getini("timeout_method") == "thread"
    hang = tmp_path / "test_hang.py"
    hang.write_text("import time\n\ndef test_hangs():\n    time.sleep(3600)\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.path.join(ROOT, "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-o",
            "timeout=3",
            "-n",
            "1",
            str(hang),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Within the subprocess's 120 s, not the hour: the bound stopped it (in a worker, pytest-timeout's
    # thread method ends the process after dumping the stacks; xdist reports the test as crashed).
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "crashed while running 'test_hang.py::test_hangs'" in out, out[-2000:]


def test_the_longest_files_are_scheduled_first(request):
    """tests/conftest.py's LONGEST_FIRST names files that exist; the collection starts with those of them
    it holds, in that order; and make test hands whole files to its two workers in collection order."""
    from conftest import LONGEST_FIRST

    assert all(os.path.isfile(os.path.join(ROOT, "tests", name)) for name in LONGEST_FIRST)
    files = list(dict.fromkeys(item.path.name for item in request.session.items))
    present = [name for name in LONGEST_FIRST if name in files]
    assert files[: len(present)] == present, files[:12]
    with open(os.path.join(ROOT, "Makefile")) as f:
        (command,) = [line for line in f if line.startswith("\t") and " pytest " in line and " -n " in line]
    assert "--dist loadfile" in command and "--no-loadscope-reorder" in command, command
