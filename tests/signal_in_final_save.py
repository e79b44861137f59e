"""Run tools/train.py with SIGTERM sent to its whole process group from inside the final save.

tests/test_signals.py uses it: the write of model.safetensors is the last file of a finished run,
and a save lasts milliseconds, so a signal from outside could not be timed to land inside it. The
signal is sent just before the bytes are written; Python runs the handler at once, in the middle of
the save, which must then finish before the run exits 143.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from senet import checkpoint  # noqa: E402

_write = checkpoint.atomic_write


def _write_with_signal(path, data):
    if path.endswith("model.safetensors"):
        os.killpg(os.getpgrp(), signal.SIGTERM)  # as scancel does: every process of the job
    return _write(path, data)


checkpoint.atomic_write = _write_with_signal
sys.argv = [os.path.join(ROOT, "tools", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
