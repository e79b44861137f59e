"""Install requirements.txt into this venv, with the Paddle, ONNX Runtime and DALI builds this machine needs.

    .venv/bin/python scripts/install_requirements.py --dry-run
    .venv/bin/python scripts/install_requirements.py --dali
    .venv/bin/python scripts/install_requirements.py --paddle paddlepaddle-gpu==3.3.1 --paddle-index https://www.paddlepaddle.org.cn/packages/stable/cu126/
    .venv/bin/python scripts/install_requirements.py --check-only

`make install` runs it with the new venv's Python (PADDLE=, PADDLE_INDEX= and DALI=1 become --paddle,
--paddle-index and --dali). Standard library only: it runs before the venv holds anything.

What the machine is, from `nvidia-smi`: `nvidia-smi -L` lists the GPUs, and the header of a plain
`nvidia-smi` gives the newest CUDA version the driver runs ("CUDA Version: 12.4"). No nvidia-smi, one
that fails, or one that lists no GPU: a CPU machine, and the install is the one from before GPUs were
handled here: requirements.txt as written (paddlepaddle==3.3.1 and onnxruntime from PyPI), one
`pip install -r`, then `pip check`.

On a GPU machine the set differs in two lines, and the rest installs as on a CPU, from PyPI:
- paddlepaddle-gpu 3.3.1 instead of paddlepaddle. PyPI has no 3.x GPU build (it stops at 2.6.2): Paddle
  publishes them on its own index, one per CUDA version, and we take the newest build not newer than the
  driver's CUDA version. It is installed first, alone, from that index (Paddle's install page does the
  same), so no other package is looked up there.
- onnxruntime-gpu instead of onnxruntime, for the Paddle build's CUDA major. Both install the same
  `onnxruntime` package folder, so one beside the other breaks both.
A package that already holds the other build's files (a venv made with another PADDLE=) is uninstalled
first, and after the install the venv's distributions are listed: two builds of Paddle, of ONNX Runtime
or of DALI side by side is an error. `--dry-run` prints the choice and the commands, writes the resolved
requirement set to --out, and installs nothing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")

PADDLE_VERSION = "3.3.1"
CPU_PADDLE = f"paddlepaddle=={PADDLE_VERSION}"
GPU_PADDLE = f"paddlepaddle-gpu=={PADDLE_VERSION}"

# The CUDA builds of paddlepaddle-gpu 3.3.x on Paddle's index, oldest first (CUDA major, minor). Sources:
# Paddle's install pages ("linux-pip_en", PaddleOCR's and PaddleX's paddlepaddle_install:
# `python -m pip install paddlepaddle-gpu==3.x -i https://www.paddlepaddle.org.cn/packages/stable/cuXYZ/`
# for cu118 and cu126), Paddle's index pages packages/stable/cu126/ and cu129/, and projects installing
# paddlepaddle-gpu==3.3.0 and 3.3.1 from cu118, cu126, cu129 and cu130. cu123 was a 3.0 beta build only.
# Not checked from here: this machine reaches PyPI only, not Paddle's index.
PADDLE_CUDA_BUILDS = ((11, 8), (12, 6), (12, 9), (13, 0))
PADDLE_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cu{}{}/"

# onnxruntime-gpu for each CUDA major of the Paddle build. Read from each release's metadata on PyPI (its
# "cuda" extra names the nvidia-cuda-runtime it was built for) and ONNX Runtime's CUDA execution provider
# page ("Starting with version 1.19, CUDA 12.x becomes the default version ... in PyPI"; a build for
# CUDA X.y runs on any X.z, by CUDA's minor version compatibility):
# - 11: 1.18.1, the last on PyPI built for CUDA 11.8 and cuDNN 8, as Paddle's cu118 build is (its Docker
#   image: cuda11.8-cudnn8.9). It requires numpy < 2, so this set resolves to numpy 1.26 (and
#   opencv-python-headless 4.11), as `pip install --dry-run -r` of the set shows.
# - 12: 1.19 to 1.26, CUDA 12.x and cuDNN 9 (extra "cuda": nvidia-cuda-runtime-cu12~=12.0), as Paddle's
#   cu126 (cuDNN 9.5) and cu129 builds.
# - 13: 1.27 on, CUDA 13.x and cuDNN 9 (1.27.0: nvidia-cuda-runtime-cu13~=13.0; 1.31.1: nvidia-cudnn-cu13).
# Without the "cuda"/"cudnn" extras: Paddle's wheel already brings the nvidia-* libraries, and a second
# copy pinned by ONNX Runtime could disagree with Paddle's pins.
ONNXRUNTIME_GPU = {11: "onnxruntime-gpu==1.18.1", 12: "onnxruntime-gpu>=1.19,<1.27", 13: "onnxruntime-gpu>=1.27,<2"}

# NVIDIA DALI (DALI=1, and `make test`): one wheel per CUDA major, on PyPI (about 424 MB with its nvidia-*
# dependencies). It brings its own CUDA libraries, so the driver decides, not the Paddle build. 2.4.0 is the
# release installed and run here. DALI's CPU pipelines run with either build: a CPU machine gets CUDA 12's.
DALI = {12: "nvidia-dali-cuda120>=2.4,<3", 13: "nvidia-dali-cuda130>=2.4,<3"}
DALI_ON_CPU = DALI[12]

# Distributions that install the same Python package folder: two of one group overwrite each other.
SAME_FOLDER = (
    ("paddlepaddle", "paddlepaddle-gpu"),
    ("onnxruntime", "onnxruntime-gpu"),
    ("nvidia-dali-cuda120", "nvidia-dali-cuda130"),
)

NVIDIA_SMI_TIMEOUT_S = 60  # a hung driver must not hang `make install`


class InstallError(Exception):
    """A choice that cannot be made for this machine; the message names the problem and the fix."""


@dataclass(frozen=True)
class Machine:
    """What nvidia-smi says: the driver's CUDA version when it lists a GPU, else None and why not."""

    driver_cuda: tuple[int, int] | None
    why: str  # e.g. "no nvidia-smi", "nvidia-smi lists no GPU", "1 GPU, driver runs CUDA 12.4"


@dataclass(frozen=True)
class Plan:
    """What gets installed, and from where."""

    paddle: str  # its requirement, e.g. paddlepaddle-gpu==3.3.1
    paddle_index: str | None  # None: from PyPI, with the rest of the set
    cuda_build: tuple[int, int] | None  # the Paddle build's CUDA version; None for the CPU build
    requirements: list[str]  # the resolved set: requirements.txt with its lines swapped as chosen
    summary: str  # the one line `make install` prints


def cuda_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def name_of(requirement: str) -> str:
    """The distribution a requirement line names, normalised (PEP 503): 'onnxruntime-gpu>=1.19' -> 'onnxruntime-gpu'."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


# ---------------------------------------------------------------- the machine


def detect_machine() -> Machine:
    """Ask nvidia-smi (from PATH) whether there is a GPU and which CUDA version its driver runs."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Machine(None, "no nvidia-smi")
    listing = run_quietly([smi, "-L"])
    if listing.returncode != 0:
        return Machine(None, f"nvidia-smi -L failed with exit {listing.returncode}")
    gpus = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    if not gpus:
        return Machine(None, "nvidia-smi lists no GPU")
    header = run_quietly([smi])
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header.stdout) if header.returncode == 0 else None
    if match is None:
        raise InstallError(
            f"nvidia-smi lists {len(gpus)} GPU(s) but its header shows no 'CUDA Version: X.Y': "
            f"name the build yourself, e.g. make install PADDLE={GPU_PADDLE} "
            f"PADDLE_INDEX={PADDLE_INDEX.format(12, 6)}"
        )
    driver = (int(match.group(1)), int(match.group(2)))
    return Machine(driver, f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}, driver runs CUDA {cuda_text(driver)}")


def run_quietly(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a probe; one that cannot start or hangs counts as failed (exit -1)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, -1, "", str(e))


# ---------------------------------------------------------------- the choice


def newest_not_newer(builds: tuple[tuple[int, int], ...], driver: tuple[int, int]) -> tuple[int, int] | None:
    """The newest build whose CUDA version the driver runs (a driver runs every CUDA version up to its own)."""
    fitting = [b for b in builds if b <= driver]
    return max(fitting) if fitting else None


def build_of_index(index: str) -> tuple[int, int] | None:
    """The CUDA build an index URL of Paddle's names: '.../stable/cu126/' -> (12, 6); None if it names none."""
    match = re.search(r"/cu(\d+)(\d)/?$", index)
    return (int(match.group(1)), int(match.group(2))) if match else None


def swap(lines: list[str], name: str, requirement: str) -> list[str]:
    """requirements.txt's lines with the one for distribution `name` replaced by `requirement`."""
    found = [i for i, line in enumerate(lines) if name_of(line) == name and not line.lstrip().startswith("#")]
    if len(found) != 1:
        raise InstallError(f"requirements.txt must name {name} on exactly one line (found {len(found)}): fix it")
    return lines[: found[0]] + [requirement] + lines[found[0] + 1 :]


def choose(
    machine: Machine,
    requirements: list[str],
    paddle: str | None = None,
    paddle_index: str | None = None,
    dali: bool = False,
) -> Plan:
    """The set to install on `machine`. `paddle` and `paddle_index` (PADDLE=, PADDLE_INDEX=) override the
    package and the index; the CUDA build then comes from the index's name where it has one."""
    driver = machine.driver_cuda
    driver_build = newest_not_newer(PADDLE_CUDA_BUILDS, driver) if driver else None
    paddle = paddle or (GPU_PADDLE if driver else CPU_PADDLE)
    gpu_paddle = name_of(paddle) == "paddlepaddle-gpu"

    if gpu_paddle and paddle_index is None:
        if driver is None:
            raise InstallError(
                f"{paddle} comes from Paddle's index for its CUDA build, and no GPU was found "
                f"to choose one ({machine.why}): add PADDLE_INDEX={PADDLE_INDEX.format(12, 6)} "
                f"(or cu118, cu129, cu130)"
            )
        if driver_build is None:
            raise InstallError(
                f"the NVIDIA driver runs CUDA {cuda_text(driver)}, older than the oldest "
                f"paddlepaddle-gpu {PADDLE_VERSION} build (CUDA {cuda_text(PADDLE_CUDA_BUILDS[0])}): "
                f"update the driver, or install the CPU build with make install PADDLE={CPU_PADDLE}"
            )
        paddle_index = PADDLE_INDEX.format(*driver_build)
    index_build = build_of_index(paddle_index) if gpu_paddle and paddle_index else None
    cuda_build = (index_build or driver_build) if gpu_paddle else None

    lines = swap(requirements, "paddlepaddle", paddle)
    onnxruntime = ONNXRUNTIME_GPU.get(cuda_build[0]) if cuda_build else None
    if onnxruntime:
        lines = swap(lines, "onnxruntime", onnxruntime)
    if dali:
        lines.append(dali_requirement(machine))

    if not gpu_paddle:
        build = "CPU build"
    elif cuda_build is None:
        build = "CUDA build unknown: the index names none and no GPU was found"
    else:  # from the index's name, or the driver's choice when PADDLE_INDEX= names no build
        build = f"CUDA {cuda_text(cuda_build)} build" + ("" if index_build else " assumed from the driver")
    summary = (
        f"install: {paddle}, {build} ({machine.why}), index {paddle_index or 'PyPI'}; "
        f"{next(line for line in lines if name_of(line).startswith('onnxruntime'))}"
        + (f"; {lines[-1]}" if dali else "")
    )
    return Plan(paddle, paddle_index, cuda_build, lines, summary)


def dali_requirement(machine: Machine) -> str:
    """DALI's wheel for the driver's CUDA major (13 and newer drivers run the CUDA 13 build)."""
    if machine.driver_cuda is None:
        return DALI_ON_CPU
    major = machine.driver_cuda[0]
    if major < min(DALI):
        raise InstallError(
            f"DALI=1: DALI's oldest build on PyPI is for CUDA {min(DALI)} and this driver runs "
            f"CUDA {cuda_text(machine.driver_cuda)}: update the driver, or install without DALI=1"
        )
    return DALI[min(major, max(DALI))]


# ---------------------------------------------------------------- installing


def installed() -> set[str]:
    """The normalised names of the distributions this Python sees (the venv's, when the venv's Python runs us)."""
    return {name_of(d.metadata["Name"] or "") for d in importlib.metadata.distributions()}


def clashes(names: set[str]) -> list[str]:
    """One line per group of SAME_FOLDER that has more than one member installed."""
    return [" and ".join(group) for group in SAME_FOLDER if len(set(group) & names) > 1]


def check_no_clash(names: set[str]) -> None:
    """Raise if `names` holds two builds of one package (see SAME_FOLDER)."""
    both = clashes(names)
    if both:
        raise InstallError(
            f"this venv holds both {'; both '.join(both)}, which overwrite each other's files: "
            f"remove the venv (make clean) and run make install again"
        )


def commands(plan: Plan, out: str, present: set[str]) -> list[list[str]]:
    """The pip commands that install `plan` over a venv that holds `present`."""
    pip = [sys.executable, "-m", "pip"]
    wanted = {name_of(line) for line in plan.requirements}
    # The other build of a package we install: it holds the same folder, and pip would leave it beside ours.
    others = sorted(
        other
        for group in SAME_FOLDER
        for other in group
        if other in present and other not in wanted and set(group) & wanted
    )
    cmds = [pip + ["uninstall", "-y", *others]] if others else []
    if plan.paddle_index:
        cmds.append(pip + ["install", "-q", plan.paddle, "--index-url", plan.paddle_index])
    return cmds + [pip + ["install", "-q", "-r", out], pip + ["check"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--paddle",
        help=f"the Paddle requirement (PADDLE=); default {GPU_PADDLE} on a GPU machine, {CPU_PADDLE} elsewhere",
    )
    parser.add_argument(
        "--paddle-index",
        help="the index to install it from (PADDLE_INDEX=); default: Paddle's "
        "index for the chosen CUDA build, PyPI for the CPU build",
    )
    parser.add_argument("--dali", action="store_true", help="add NVIDIA DALI, the build for the driver's CUDA")
    parser.add_argument(
        "--out",
        default=os.path.join(sys.prefix, "requirements.resolved.txt"),
        help="where to write the resolved requirement set (default: in the venv)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the choice and the commands, write --out, install nothing"
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="only check that no two builds of Paddle, ONNX Runtime or DALI are installed",
    )
    args = parser.parse_args()

    try:
        if not args.check_only:
            with open(REQUIREMENTS) as f:
                requirements = f.read().splitlines()
            plan = choose(detect_machine(), requirements, args.paddle or None, args.paddle_index or None, args.dali)
            print(plan.summary, flush=True)
            with open(args.out, "w") as f:
                f.write("\n".join(plan.requirements) + "\n")
            present = installed()
            check_no_clash(present)  # uninstalling one of two builds would break the other's shared files
            for cmd in commands(plan, args.out, present):
                if args.dry_run:
                    print("would run:", " ".join(cmd))
                elif subprocess.run(cmd).returncode != 0:
                    raise InstallError(
                        f"`{' '.join(cmd[1:])}` failed (its output is above): fix that and run make install again"
                    )
            if args.dry_run:
                return 0
        check_no_clash(installed())
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
