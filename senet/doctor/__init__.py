"""`make doctor`: what this machine is, and whether every path of the trainer it can run works, in about a minute.

    from senet.doctor import doctor
    exit_code = doctor("output/doctor")      # prints the report, writes output/doctor/doctor.json

First the machine (senet.doctor.machine): Paddle's version and build (CUDA, cuDNN, NCCL, TensorRT as
Paddle reports them), each GPU with its memory and compute capability, the CPU and the instruction
sets that matter here, the versions of OpenCV, ONNX Runtime, paddle2onnx, VisualDL and DALI, and
the thread settings. Then the checks (senet.doctor.plan decides which this machine runs and at
which sizes; senet.doctor.train_checks and deploy_checks hold them, senet.doctor.context what they
share), each printed as one line as it finishes: PASS, FAIL or SKIP, the
seconds it took, the reason, and for a FAIL the fix. doctor.json holds the same, plus each failed
check's log and traceback, for a bug report. The exit code is 1 if any check failed, else 0: a SKIP
is a path this machine cannot run (no GPU, DALI not installed, ...), never a pass.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

from senet.doctor import deploy_checks as deploy
from senet.doctor import train_checks as train
from senet.doctor.context import Context, Outcome, failed
from senet.doctor.machine import describe, lines
from senet.doctor.plan import Planned, on_gpu, plan, sizes

STATUSES = ("PASS", "FAIL", "SKIP")
LOG_TAIL = 6000  # characters of a failed check's log kept in doctor.json

# Each planned check's function, by the name senet.doctor.plan gives it.
CHECKS: dict[str, Callable[[Context, io.StringIO], Outcome]] = {
    "paddle_device": train.check_paddle_device,
    "train_fp32": train.check_train_fp32,
    "train_amp_o1_fp16": train.check_train_amp_o1_fp16,
    "train_amp_o2_bf16": train.check_train_amp_o2_bf16,
    "train_nhwc": train.check_train_nhwc,
    "eval_nchw_nhwc": train.check_eval_nchw_nhwc,
    "checkpoint_resume": train.check_checkpoint_resume,
    "fit": train.check_fit,
    "fit_resume": train.check_fit_resume,
    "eval_weights": train.check_eval_weights,
    "export_paddle_inference": deploy.check_export_paddle_inference,
    "export_tensorrt": deploy.check_export_tensorrt,
    "export_onnxruntime": deploy.check_export_onnxruntime,
    "dali_pipeline": deploy.check_dali_pipeline,
    "launch_two_processes": deploy.check_launch_two_processes,
}


@dataclass(frozen=True)
class Result:
    """One check as doctor.json records it."""

    name: str
    title: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    reason: str
    fix: str = ""
    log: str = ""  # the end of what the check's code printed, for a FAIL
    traceback: str = ""  # for a FAIL raised as an exception


def run_check(planned: Planned, ctx: Context, check: Callable[[Context, io.StringIO], Outcome]) -> Result:
    """Run one planned check; an exception is a FAIL naming it (its traceback goes to doctor.json)."""
    if planned.skip:
        return Result(planned.name, planned.title, "SKIP", 0.0, planned.skip)
    log, start, trace = io.StringIO(), time.perf_counter(), ""
    try:
        outcome = check(ctx, log)
    except Exception as e:  # noqa: BLE001  (any failure of a path is that path's FAIL, and the run goes on)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        outcome = failed(f"{type(e).__name__}: {first[:500]}")
        trace = traceback.format_exc()
    seconds = round(time.perf_counter() - start, 2)
    tail = log.getvalue()[-LOG_TAIL:] if outcome.status == "FAIL" else ""
    return Result(planned.name, planned.title, outcome.status, seconds, outcome.reason, outcome.fix, tail, trace)


def line(result: Result) -> str:
    """A result as one line of the report."""
    fix = f" | fix: {result.fix}" if result.status == "FAIL" and result.fix else ""
    return f"{result.status}  {result.name:<24} {result.seconds:6.1f} s  {result.reason}{fix}"


def run_checks(
    planned: list[Planned],
    ctx: Context,
    checks: dict[str, Callable] = CHECKS,
    on_result: Callable[[Result], None] = lambda r: None,
) -> list[Result]:
    """Every planned check in order, each reported to `on_result` as it finishes."""
    results = []
    for p in planned:
        result = run_check(p, ctx, checks[p.name])
        ctx.status[p.name] = result.status
        on_result(result)
        results.append(result)
    return results


def exit_code(results: list[Result]) -> int:
    """1 if a path that should work here failed, else 0."""
    return 1 if any(r.status == "FAIL" for r in results) else 0


def summary(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def select(planned: list[Planned], only: list[str] | None) -> list[Planned]:
    """The checks `only` names run as planned; the others are SKIP (not selected). Unknown names are an error."""
    if not only:
        return planned
    check_names(only)
    return [p if p.name in only else Planned(p.name, p.title, "not selected (--only)") for p in planned]


def check_names(names: list[str]) -> None:
    """A ValueError naming the unknown ones and listing the known ones, if any name is not a check's."""
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")


def doctor(
    out_dir: str,
    keep: bool = False,
    only: list[str] | None = None,
    quick: bool = False,
    print_line: Callable[[str], None] = print,
    checks: dict[str, Callable] = CHECKS,
) -> int:
    """Describe the machine, run the checks, write <out_dir>/doctor.json; return the exit code (0 or 1).

    The checks' files (checkpoints, exported models, logs) go to <out_dir>/work, removed at the end
    unless `keep`. `checks` maps each check's name to its function (tests inject a failing one).
    """
    from senet.checkpoint import atomic_write

    check_names(only or [])  # before the machine is described (seconds): a typo is answered at once
    started = time.time()
    machine = describe()
    print_line("machine")
    for text in lines(machine):
        print_line(f"  {text}")
    planned = select(plan(machine), only)
    size = sizes(machine, quick)
    why = (
        "--quick: a small network, for tests"
        if quick
        else "the sizes a user trains at"
        if on_gpu(machine)
        else "CPU sizes, for a run of about a minute"
    )
    print_line(f"checks on the {'GPU' if on_gpu(machine) else 'CPU'}: {size} ({why})")
    workdir = os.path.join(out_dir, "work")
    shutil.rmtree(workdir, ignore_errors=True)  # a run before this one, kept with --keep
    os.makedirs(workdir, exist_ok=True)
    ctx = Context(machine, size, workdir)
    try:
        results = run_checks(planned, ctx, checks, on_result=lambda r: print_line(line(r)))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    code = exit_code(results)
    counts = summary(results)
    report = {
        "doctor_version": 1,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "exit_code": code,
        "summary": counts,
        "sizes": {**asdict(size), "device": "gpu" if on_gpu(machine) else "cpu", "quick": quick},
        "machine": machine,
        "checks": [asdict(r) for r in results],
    }
    path = os.path.join(out_dir, "doctor.json")
    atomic_write(path, (json.dumps(report, indent=1, default=str) + "\n").encode())
    print_line(
        f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
        f"{report['seconds']:.0f} s; wrote {path}"
        + (f", kept {workdir}" if keep else "")
        + (": attach it to a bug report" if code else "")
    )
    return code
