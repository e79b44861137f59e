"""Start-up noise (issue 13): four known Paddle messages are filtered where they are made, nothing else is.

Each test runs a fresh Python, because the messages come once per process: at `import paddle`,
at the first BatchNorm forward in training mode, and at the first `paddle.jit.save`.
"""

import os
import subprocess
import sys

from senet.runtime import PADDLE_OMP_NOTICE, PADDLE_PIR_OUT, PADDLE_WARNINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "configs/demo/se_resnet20_digits.yaml"
KNOWN = (*PADDLE_WARNINGS, *PADDLE_OMP_NOTICE, *PADDLE_PIR_OUT)
OTHER = "To copy construct from a tensor"  # a Paddle UserWarning we do not filter: it must still show

# Every known message, then an unrelated Paddle warning, in one process. `senet` decides the
# import: "raw" is plain Paddle (the control), "senet" goes through setup_cpu and save_static.
SCRIPT = r"""
import os, sys
sys.path.insert(0, {root!r})
mode, out = sys.argv[1], sys.argv[2]
if mode == "senet":  # 2 threads: the OMP_NUM_THREADS notice shows only above 1
    from senet.runtime import setup_cpu
    setup_cpu(2)
else:
    os.environ["OMP_NUM_THREADS"] = "2"
import paddle
bn = paddle.nn.BatchNorm2D(3)
bn.train()
bn(paddle.ones([2, 3, 4, 4]))
paddle.to_tensor(paddle.ones([1]))

class Net(paddle.nn.Layer):
    def forward(self, x):
        return x + x.mean([2, 3], keepdim=True)  # Paddle passes an out= tensor inside both ops

net = Net()
net.eval()
if mode == "senet":
    from senet.export import save_static
    save_static(net, out, 8)
else:
    paddle.jit.save(net, out, input_spec=[paddle.static.InputSpec([None, 3, 8, 8], "float32")])
print("done")
"""


def run_script(mode, tmp_path):
    script = tmp_path / "noise.py"  # a file, not -c: paddle.jit.save reads the forward's source
    script.write_text(SCRIPT.format(root=ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / mode / "net")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    return proc.stderr


def test_known_paddle_messages_are_dropped_and_others_still_show(tmp_path):
    raw = run_script("raw", tmp_path)
    for text in (*KNOWN, OTHER):  # the control: plain Paddle prints every one (else our filter is stale)
        assert text in raw, f"plain Paddle no longer prints {text!r}:\n{raw}"
    quiet = run_script("senet", tmp_path)
    for text in KNOWN:
        assert text not in quiet, quiet
    assert OTHER in quiet, quiet


def test_tools_start_with_the_projects_own_lines(tmp_path):
    """train (training-mode BatchNorm) and export (paddle.jit.save) through the command line: none of the four."""
    run = tmp_path / "run"
    tools = [
        ("train.py", "-c", DEMO, "-o", "train.max_steps=2", f"output_dir={run}"),
        (
            "export.py",
            "-c",
            DEMO,
            "-o",
            f"model.weights={run}/checkpoints/last.pdparams",
            f"output_dir={run}",
            "--format",
            "paddle",
        ),
    ]
    for name, *args in tools:
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", name), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        for text in KNOWN:
            assert text not in proc.stderr, f"{name}: {proc.stderr}"
    assert (run / "export" / "model.json").is_file()


def test_filter_stderr_keeps_every_other_line_in_order():
    """Lines from C (fd 2) and from Python's sys.stderr, in a real process (pytest would replace sys.stderr)."""
    code = (
        f"import ctypes, os, sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import filter_stderr\n"
        "with filter_stderr(('drop me',)):\n"
        "    os.write(2, b'first\\nplease drop me now\\n')\n"
        "    sys.stderr.write('second\\n')\n"
        "    ctypes.CDLL(None).dprintf(2, b'third, from C\\n')\n"
        "    sys.stderr.write('last, no newline')\n"
        "sys.stderr.write('\\nafter\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "first\nsecond\nthird, from C\nlast, no newline\nafter\n"


def test_filter_stderr_survives_a_flood_from_c_and_a_crash():
    """C code that writes more than a pipe holds while it keeps the GIL must not hang, and the last
    message of a process that aborts inside the filter must still reach the real stderr."""
    code = (
        f"import ctypes, os, sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import filter_stderr\n"
        "libc = ctypes.PyDLL(None)\n"  # PyDLL keeps the GIL during the call
        "with filter_stderr(('drop me',)):\n"
        "    for _ in range(4000):\n"
        "        libc.dprintf(2, b'%s\\n', b'x' * 60)\n"
        "    os.write(2, b'FATAL last words\\n')\n"
        "    os.abort()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -6
    assert proc.stderr.count("x" * 60) == 4000
    # after the flood, in order (PYTHONFAULTHANDLER=1 in the environment adds its report after it)
    assert "\nFATAL last words\n" in proc.stderr[proc.stderr.rindex("x" * 60) :]


def test_filters_leave_a_closed_stderr_alone():
    """With fd 2 closed (2>&-) importing paddle and filtering must still work."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu, filter_stderr\n"
        "setup_cpu(1)\nimport paddle\nwith filter_stderr(('x',)):\n    pass\nprint('ok')\n"
    )
    proc = subprocess.run(
        f'{sys.executable} -c "$CODE" 2>&-',
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CODE": code},
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def test_setup_cpu_does_not_import_paddle():
    """Processes that never use Paddle (ONNX Runtime inference, its memory probe) must not pay for it."""
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu; setup_cpu(2); "
        "print('paddle' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_senet_threads_sets_every_all_core_count():
    """SENET_THREADS=N stands for "all cores" (setup_cpu(0), a Predictor's default); an explicit count
    still wins, and a value that is not a count is refused with the variable's name."""
    code = (
        f"import os, sys; sys.path.insert(0, {ROOT!r}); from senet.runtime import setup_cpu\n"
        "print(setup_cpu(0), os.environ['OMP_NUM_THREADS'], setup_cpu(2))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**env, "SENET_THREADS": "1"}
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["1", "1", "2"], proc.stdout + proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**env, "SENET_THREADS": "two"}
    )
    assert proc.returncode != 0 and "SENET_THREADS='two': expected a whole number of threads" in proc.stderr
