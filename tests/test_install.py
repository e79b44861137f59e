"""`make install`'s choice of builds (scripts/install_requirements.py), without network or GPU.

Stand-in `nvidia-smi` programs, written here into tmp_path and put alone on PATH, play each driver; the
script's --dry-run prints its one-line choice and the pip commands it would run, and writes the resolved
requirement set, installing nothing. The table below is the choice the issue asks for: the newest
paddlepaddle-gpu 3.3.1 CUDA build not newer than the driver's CUDA version, from Paddle's index for it,
and onnxruntime-gpu for that build's CUDA instead of onnxruntime.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "install_requirements.py")
PADDLE_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/{}/"
GPU_PADDLE = "paddlepaddle-gpu==3.3.1"

# driver's CUDA version -> (Paddle's CUDA build, onnxruntime-gpu requirement, DALI wheel)
CHOICES = {
    "11.8": ("cu118", "onnxruntime-gpu==1.18.1", None),
    "12.2": ("cu118", "onnxruntime-gpu==1.18.1", "nvidia-dali-cuda120>=2.4,<3"),
    "12.4": ("cu118", "onnxruntime-gpu==1.18.1", "nvidia-dali-cuda120>=2.4,<3"),
    "12.6": ("cu126", "onnxruntime-gpu>=1.19,<1.27", "nvidia-dali-cuda120>=2.4,<3"),
    "12.9": ("cu129", "onnxruntime-gpu>=1.19,<1.27", "nvidia-dali-cuda120>=2.4,<3"),
    "13.0": ("cu130", "onnxruntime-gpu>=1.27,<2", "nvidia-dali-cuda130>=2.4,<3"),
    "13.2": ("cu130", "onnxruntime-gpu>=1.27,<2", "nvidia-dali-cuda130>=2.4,<3"),
}


def requirement_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


REQUIREMENTS_TEXT = open(os.path.join(ROOT, "requirements.txt")).read()
REQUIREMENTS = requirement_lines(REQUIREMENTS_TEXT)


@dataclass
class Run:
    returncode: int
    summary: list[str]  # the lines that are not "would run:" lines: the one-line choice
    commands: list[str]  # the pip commands, without the Python that runs them
    resolved: str  # the resolved requirement set written to --out ("" if none was written)
    stderr: str


def fake_nvidia_smi(tmp_path, cuda: str | None = None, gpus: int = 1, fails: bool = False) -> str:
    """A folder holding a stand-in nvidia-smi (or none, for cuda=None and not fails), to be PATH alone."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if cuda is None and not fails:
        return str(folder)
    # What the real one prints: `-L` one line per GPU ("No devices were found" for none), a plain call a
    # table whose header names the driver's CUDA version. printf turns each \n into a line break.
    listing = "".join(f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i:08d})\\n" for i in range(gpus))
    listing = listing or "No devices were found\\n"
    header = (
        f"| NVIDIA-SMI 550.54.14      Driver Version: 550.54.14      CUDA Version: {cuda}     |\\n"
        if cuda
        else "| NVIDIA-SMI 550.54.14      Driver Version: 550.54.14      |\\n"
    )
    body = (
        "printf 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\\n'; exit 9"
        if fails
        else f"if [ \"$1\" = \"-L\" ]; then printf '{listing}'; exit 0; fi\nprintf '{header}'"
    )
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{body}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return str(folder)


def dry_run(tmp_path, path: str, *args: str, pythonpath: str | None = None) -> Run:
    out = tmp_path / "requirements.resolved.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "PYTHONPATH")}
    env["PATH"] = path  # the stand-in alone: a real nvidia-smi elsewhere on PATH must not answer
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--dry-run", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.splitlines()
    python = f"{sys.executable} "
    commands = [ln[len("would run: ") :].replace(python, "", 1) for ln in lines if ln.startswith("would run: ")]
    return Run(
        proc.returncode,
        [ln for ln in lines if not ln.startswith("would run: ")],
        commands,
        out.read_text() if out.exists() else "",
        proc.stderr,
    )


def installed_cpu_builds() -> set[str]:
    """The CPU builds of Paddle and ONNX Runtime in this venv: a GPU install must remove them first."""
    import importlib.metadata

    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return names & {"paddlepaddle", "onnxruntime"}


# ---------------------------------------------------------------- GPU machines


@pytest.mark.parametrize("cuda", sorted(CHOICES))
def test_a_gpu_machine_gets_the_newest_paddle_build_its_driver_runs(tmp_path, cuda):
    build, onnxruntime, _ = CHOICES[cuda]
    index = PADDLE_INDEX.format(build)
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, cuda))
    assert run.returncode == 0, run.stderr
    build_text = f"CUDA {build[2:-1]}.{build[-1]} build"
    assert run.summary == [
        f"install: {GPU_PADDLE}, {build_text} (1 GPU, driver runs CUDA {cuda}), index {index}; {onnxruntime}"
    ]
    # Paddle alone from its index, then the whole set (the rest from PyPI, as on a CPU), then pip check.
    paddle_first = f"-m pip install -q {GPU_PADDLE} --index-url {index}"
    assert run.commands[-3:] == [
        paddle_first,
        f"-m pip install -q -r {tmp_path}/requirements.resolved.txt",
        "-m pip check",
    ]
    # requirements.txt with exactly two lines swapped: nothing else changes, and no CPU Paddle or CPU ONNX
    # Runtime is left in the set to be installed beside the GPU ones.
    expected = [
        GPU_PADDLE if r.startswith("paddlepaddle==") else onnxruntime if r.startswith("onnxruntime") else r
        for r in REQUIREMENTS
    ]
    assert requirement_lines(run.resolved) == expected
    assert not any(re.match(r"(paddlepaddle|onnxruntime)\s*[=<>]", r) for r in requirement_lines(run.resolved))


def test_a_gpu_install_removes_the_cpu_builds_it_replaces_first(tmp_path):
    """Over a venv that holds the CPU paddlepaddle or onnxruntime (this one, on a CPU machine), the GPU
    builds would land beside them in the same package folders: they are uninstalled before anything."""
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "12.6"))
    present = installed_cpu_builds()
    if present:
        assert run.commands[0] == f"-m pip uninstall -y {' '.join(sorted(present))}"
        assert len(run.commands) == 4
    else:
        assert len(run.commands) == 3 and "uninstall" not in run.commands[0]


def test_two_gpus_are_one_machine(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "12.9", gpus=2))
    assert run.returncode == 0, run.stderr
    assert "(2 GPUs, driver runs CUDA 12.9), index " + PADDLE_INDEX.format("cu129") in run.summary[0]


def test_a_driver_older_than_every_build_is_a_one_line_error_naming_both_versions(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "11.2"))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ")
    assert "CUDA 11.2" in run.stderr and "oldest paddlepaddle-gpu 3.3.1 build (CUDA 11.8)" in run.stderr
    assert "update the driver" in run.stderr and "PADDLE=paddlepaddle==3.3.1" in run.stderr  # the two fixes
    assert run.commands == []


def test_a_gpu_without_a_cuda_version_in_the_header_is_an_error_not_a_cpu_install(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, cuda=""))
    assert run.returncode == 2 and "shows no 'CUDA Version: X.Y'" in run.stderr and "PADDLE_INDEX=" in run.stderr


# ---------------------------------------------------------------- CPU machines: as before GPUs were handled


@pytest.mark.parametrize("machine", ["no nvidia-smi", "nvidia-smi fails", "nvidia-smi lists no GPU"])
def test_a_machine_without_a_usable_gpu_installs_requirements_txt_as_written(tmp_path, machine):
    path = {
        "no nvidia-smi": lambda: fake_nvidia_smi(tmp_path),
        "nvidia-smi fails": lambda: fake_nvidia_smi(tmp_path, fails=True),
        "nvidia-smi lists no GPU": lambda: fake_nvidia_smi(tmp_path, "12.6", gpus=0),
    }[machine]()
    run = dry_run(tmp_path, path)
    assert run.returncode == 0, run.stderr
    why = {
        "no nvidia-smi": "no nvidia-smi",
        "nvidia-smi fails": "nvidia-smi -L failed with exit 9",
        "nvidia-smi lists no GPU": "nvidia-smi lists no GPU",
    }[machine]
    assert run.summary == [f"install: paddlepaddle==3.3.1, CPU build ({why}), index PyPI; onnxruntime>=1.17,<2"]
    # The install of before: requirements.txt byte for byte, one pip install -r of it, then pip check.
    assert run.resolved == REQUIREMENTS_TEXT
    assert "paddlepaddle==3.3.1" in REQUIREMENTS and any(r.startswith("onnxruntime>=") for r in REQUIREMENTS)
    assert run.commands[-2:] == [f"-m pip install -q -r {tmp_path}/requirements.resolved.txt", "-m pip check"]
    assert not any("--index-url" in c for c in run.commands)


# ---------------------------------------------------------------- PADDLE= and PADDLE_INDEX=


def test_paddle_overrides_the_package_and_keeps_the_index_the_driver_chose(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "12.6"), "--paddle", "paddlepaddle-gpu==3.3.0")
    index = PADDLE_INDEX.format("cu126")
    assert run.returncode == 0, run.stderr
    assert f"-m pip install -q paddlepaddle-gpu==3.3.0 --index-url {index}" in run.commands
    assert "paddlepaddle-gpu==3.3.0" in requirement_lines(run.resolved)


def test_paddle_can_ask_for_the_cpu_build_on_a_gpu_machine(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "11.2"), "--paddle", "paddlepaddle==3.3.1")
    assert run.returncode == 0, run.stderr  # the too-old driver does not matter to the CPU build
    assert run.summary[0].startswith(
        "install: paddlepaddle==3.3.1, CPU build (1 GPU, driver runs CUDA 11.2), index PyPI; onnxruntime>=1.17,<2"
    )
    assert requirement_lines(run.resolved) == REQUIREMENTS
    assert not any("--index-url" in c for c in run.commands)


def test_paddle_index_overrides_the_index_and_its_name_gives_the_cuda_build(tmp_path):
    mirror = "https://mirror.example.org/paddle/stable/cu126/"
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "12.9"), "--paddle-index", mirror)
    assert run.returncode == 0, run.stderr
    assert f"-m pip install -q {GPU_PADDLE} --index-url {mirror}" in run.commands
    assert ", CUDA 12.6 build (" in run.summary[0] and "onnxruntime-gpu>=1.19,<1.27" in requirement_lines(run.resolved)


def test_an_index_that_names_no_build_keeps_the_drivers_choice_and_says_so(tmp_path):
    mirror = "https://mirror.example.org/simple/"
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "13.0"), "--paddle-index", mirror)
    assert run.returncode == 0, run.stderr
    assert f"{GPU_PADDLE}, CUDA 13.0 build assumed from the driver (1 GPU" in run.summary[0]
    assert f"-m pip install -q {GPU_PADDLE} --index-url {mirror}" in run.commands
    assert "onnxruntime-gpu>=1.27,<2" in requirement_lines(run.resolved)


def test_a_gpu_build_on_a_machine_without_gpu_needs_paddle_index(tmp_path):
    """A Docker build sees no GPU: PADDLE= alone cannot tell which CUDA build, both together can."""
    alone = dry_run(tmp_path, fake_nvidia_smi(tmp_path), "--paddle", GPU_PADDLE)
    assert alone.returncode == 2 and "PADDLE_INDEX=" + PADDLE_INDEX.format("cu126") in alone.stderr
    index = PADDLE_INDEX.format("cu129")
    both = dry_run(tmp_path, str(tmp_path / "bin"), "--paddle", GPU_PADDLE, "--paddle-index", index)
    assert both.returncode == 0, both.stderr
    assert both.summary[0].startswith(f"install: {GPU_PADDLE}, CUDA 12.9 build (no nvidia-smi), index {index}")
    assert "onnxruntime-gpu>=1.19,<1.27" in requirement_lines(both.resolved)


# ---------------------------------------------------------------- DALI=1


@pytest.mark.parametrize("cuda", [None, "12.2", "12.9", "13.0", "13.2"])
def test_dali_is_the_build_for_the_drivers_cuda_and_the_cuda_12_one_on_a_cpu(tmp_path, cuda):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, cuda), "--dali")
    assert run.returncode == 0, run.stderr
    dali = CHOICES[cuda][2] if cuda else "nvidia-dali-cuda120>=2.4,<3"
    assert requirement_lines(run.resolved)[-1] == dali
    assert run.summary[0].endswith(f"; {dali}")
    assert len([r for r in requirement_lines(run.resolved) if r.startswith("nvidia-dali")]) == 1


def test_dali_on_a_cuda_11_driver_is_an_error_with_the_fix(tmp_path):
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path, "11.8"), "--dali")
    assert run.returncode == 2 and "DALI=1" in run.stderr and "CUDA 11.8" in run.stderr
    assert "install without DALI=1" in run.stderr


# ---------------------------------------------------------------- two builds side by side


def fake_site(tmp_path, *dists: str) -> str:
    """A folder of bare dist-info entries (name-version), seen by importlib.metadata through PYTHONPATH."""
    site = tmp_path / "site"
    for dist in dists:
        name, version = dist.rsplit("-", 1)
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return str(site)


def check_only(pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, SCRIPT, "--check-only"], env=env, capture_output=True, text=True, timeout=60)


def test_this_venv_holds_one_paddle_and_one_onnxruntime():
    proc = check_only()
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "group",
    [
        ("paddlepaddle", "paddlepaddle-gpu"),
        ("onnxruntime", "onnxruntime-gpu"),
        ("nvidia-dali-cuda120", "nvidia-dali-cuda130"),
    ],
)
def test_a_second_build_beside_the_first_fails_the_install_check(tmp_path, group):
    site = fake_site(tmp_path, *(f"{name}-1.0" for name in group))  # beside this venv's own (same names: one)
    proc = check_only(site)
    assert proc.returncode == 2
    assert f"this venv holds both {group[0]} and {group[1]}" in proc.stderr and "make clean" in proc.stderr
    # and an install over such a venv stops before running anything: removing one of the two would take
    # the files they share from the other
    run = dry_run(tmp_path, fake_nvidia_smi(tmp_path), pythonpath=site)
    assert run.returncode == 2 and run.commands == []


# ---------------------------------------------------------------- through the Makefile


def make_dry(*args: str) -> str:
    """`make -n -B`: the commands make would run for these targets, none run.

    Under `make test` this runs as a sub-make: MAKELEVEL and MAKEFLAGS from the parent would
    make it print "Entering/Leaving directory" lines (CI saw them), so it runs without them.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    command = ["make", "--no-print-directory", "-n", "-B", *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_install_passes_paddle_paddle_index_and_dali_on():
    script = ".venv/bin/python scripts/install_requirements.py"
    plain = make_dry("install")
    assert f"{script} --out .venv/requirements.resolved.txt" in plain
    assert "--paddle" not in plain and "--dali" not in plain
    index = PADDLE_INDEX.format("cu126")
    given = make_dry("install", "PADDLE=paddlepaddle-gpu==3.3.0", f"PADDLE_INDEX={index}", "DALI=1")
    args = f"--out .venv/requirements.resolved.txt --paddle 'paddlepaddle-gpu==3.3.0' --paddle-index '{index}'"
    assert f"{script} {args}" in given and f"{script} --dali {args}" in given


def test_make_test_installs_dali_for_the_dali_tests():
    assert ".venv/bin/python scripts/install_requirements.py --dali " in make_dry("test")


def test_make_doctor_runs_the_doctor_after_the_install():
    lines = make_dry("doctor").splitlines()
    assert lines[-1] == ".venv/bin/python tools/doctor.py"
    assert any("scripts/install_requirements.py" in ln for ln in lines[:-1])
