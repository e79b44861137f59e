"""`make doctor` (tools/doctor.py, senet.doctor): the CPU run through the command line, the report and
doctor.json, a failing path's exit code, the checks failing on broken code, and which checks a machine
gets from its description.

The CPU run here is real: every check runs the trainer's own code. It uses --quick (the demo's
se_resnet20 instead of se_resnet50, about 20 s instead of a minute) so that the suite stays short; the
default run, what `make doctor` does, runs the same checks on the same code with a larger network. No
test here can run a GPU check: the GPU paths are tested only as decisions (which checks a GPU machine
gets, from stand-in descriptions), never their numerics. Those run only on a machine with a GPU.
"""

import json
import os
import subprocess
import sys

import pytest

from senet.doctor.plan import CPU_SIZES, GPU_SIZES, QUICK_SIZES, o2_dtype, plan, sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = [
    "paddle_device",
    "train_fp32",
    "train_amp_o1_fp16",
    "train_amp_o2_bf16",
    "train_nhwc",
    "eval_nchw_nhwc",
    "checkpoint_resume",
    "fit",
    "fit_resume",
    "eval_weights",
    "export_paddle_inference",
    "export_tensorrt",
    "export_onnxruntime",
    "dali_pipeline",
    "launch_two_processes",
]
GPU_ONLY = {"train_amp_o1_fp16", "train_amp_o2_bf16", "train_nhwc", "export_tensorrt"}


def doctor_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "tools/doctor.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


def dali_installed() -> bool:
    import importlib.metadata

    return any((d.metadata["Name"] or "").lower().startswith("nvidia-dali") for d in importlib.metadata.distributions())


# --------------------------------------------------------------------------- the CPU run, end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("doctor")
    proc = doctor_cli("--quick", "--out", str(out))
    return proc, out


def test_cpu_run_prints_the_machine_and_one_line_per_check(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    machine = lines[: lines.index(next(ln for ln in lines if ln.startswith("checks on the CPU")))]
    text = "\n".join(machine)
    assert "paddle 3.3.1" in text and "CPU build (no CUDA)" in text and "nvidia-smi" in text
    assert "GPUs seen by Paddle: none" in text
    for name in ("AVX2", "AVX-512", "AVX512-BF16", "AMX", "VNNI"):
        assert f"{name} yes" in text or f"{name} no" in text, name
    for name in ("OpenCV", "ONNX Runtime", "paddle2onnx", "VisualDL", "DALI"):
        assert f"{name} " in text, name
    assert "OMP_NUM_THREADS=" in text and "SENET_THREADS=" in text
    assert "se_resnet20 from configs/demo/se_resnet20_digits.yaml" in proc.stdout  # --quick says what it runs
    rows = [ln.split() for ln in lines if ln.split()[:1] in (["PASS"], ["FAIL"], ["SKIP"])]
    assert [r[1] for r in rows] == ORDER  # every check, one line each, in order
    status = {r[1]: r[0] for r in rows}
    for name in ORDER:
        want = "SKIP" if name in GPU_ONLY else "PASS"
        if name == "dali_pipeline":
            want = "PASS" if dali_installed() else "SKIP"
        assert status[name] == want, [ln for ln in lines if f" {name} " in ln]
    assert lines[-1].startswith(
        f"{sum(s == 'PASS' for s in status.values())} passed, 0 failed, "
        f"{sum(s == 'SKIP' for s in status.values())} skipped in "
    )


def test_cpu_run_writes_doctor_json_and_removes_its_work_files(quick_run):
    proc, out = quick_run
    report = json.loads((out / "doctor.json").read_text())
    assert report["exit_code"] == 0 and report["sizes"]["arch"] == QUICK_SIZES.arch and report["sizes"]["quick"]
    parts = {"python", "platform", "paddle", "gpus", "nvidia_smi", "cpu", "packages", "threads"}
    assert parts <= set(report["machine"])
    assert report["machine"]["paddle"]["version"] == "3.3.1" and report["machine"]["gpus"] == []
    checks = report["checks"]
    assert [c["name"] for c in checks] == ORDER
    for c in checks:
        assert set(c) == {"name", "title", "status", "seconds", "reason", "fix", "log", "traceback"}
        assert c["status"] in ("PASS", "SKIP") and c["reason"] and c["title"]
        assert c["seconds"] >= 0 and (c["status"] == "PASS" or c["seconds"] == 0) and not c["fix"]
        assert f"{c['status']}  {c['name']}" in proc.stdout and c["reason"] in proc.stdout  # the same as printed
    assert report["summary"] == {s: sum(c["status"] == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    assert sorted(os.listdir(out)) == ["doctor.json"]  # the checkpoints and exports are gone without --keep


def test_the_cpu_checks_compare_numbers_within_the_measured_noise(quick_run):
    report = json.loads((quick_run[1] / "doctor.json").read_text())
    reasons = {c["name"]: c["reason"] for c in report["checks"]}
    for name in ("eval_nchw_nhwc", "export_paddle_inference", "export_onnxruntime"):
        assert "x the measured noise" in reasons[name] and "(bound 4 x noise" in reasons[name], reasons[name]
    assert "bitwise" in reasons["checkpoint_resume"]  # one machine, one thread count: rule 1 of senet/numerics.py
    assert "weights identical on both ranks" in reasons["launch_two_processes"]


# --------------------------------------------------------------------------- failures and exit codes


def test_a_cpu_paddle_under_a_gpu_driver_fails_with_the_install_fix(tmp_path):
    """A real failing path through the command line: nvidia-smi lists a GPU, and Paddle is the CPU build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\nif [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-0)"; exit 0; fi\n'
        'echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |"\n'
    )
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = doctor_cli("--only", "paddle_device", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL  paddle_device"))
    assert "nvidia-smi lists 1 GPU(s) but Paddle 3.3.1 is the CPU build" in row
    assert "| fix: rm -rf .venv && make install" in row
    assert "nvidia-smi: 1 GPU(s), driver 550.54.15, CUDA 12.4" in proc.stdout
    report = json.loads((tmp_path / "out" / "doctor.json").read_text())
    assert report["exit_code"] == 1 and report["summary"] == {"PASS": 0, "FAIL": 1, "SKIP": 14}
    assert {c["reason"] for c in report["checks"][1:]} == {"not selected (--only)"}


def test_an_unknown_check_name_is_an_error_naming_the_known_ones(tmp_path):
    proc = doctor_cli("--only", "fit,fitt", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown check(s) fitt; known: paddle_device, train_fp32" in proc.stderr


def test_an_injected_failing_check_gives_exit_1_its_fix_and_its_traceback(tmp_path):
    from senet.doctor import CHECKS, doctor
    from senet.doctor.context import failed

    def says_no(ctx, log):
        log.write("what the check printed\n")
        return failed("the loss went up", "lower the learning rate")

    def raises(ctx, log):
        raise RuntimeError("a kernel broke\nsecond line")

    printed = []
    code = doctor(
        str(tmp_path),
        only=["paddle_device", "train_fp32", "eval_nchw_nhwc"],
        print_line=printed.append,
        checks={**CHECKS, "train_fp32": says_no, "eval_nchw_nhwc": raises},
    )
    assert code == 1
    rows = {ln.split()[1]: ln for ln in printed if ln.startswith(("PASS", "FAIL", "SKIP"))}
    assert rows["paddle_device"].startswith("PASS")
    assert rows["train_fp32"].startswith("FAIL") and rows["train_fp32"].endswith(
        "the loss went up | fix: lower the learning rate"
    )
    assert "RuntimeError: a kernel broke | fix: send doctor.json with a bug report" in rows["eval_nchw_nhwc"]
    report = json.loads((tmp_path / "doctor.json").read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["train_fp32"]["log"] == "what the check printed\n"
    assert "RuntimeError: a kernel broke" in by_name["eval_nchw_nhwc"]["traceback"]
    assert report["exit_code"] == 1 and printed[-1].endswith("attach it to a bug report")


def test_skips_alone_exit_0():
    from senet.doctor import Result, exit_code

    assert exit_code([Result("a", "t", "PASS", 1.0, "ok"), Result("b", "t", "SKIP", 0.0, "no GPU")]) == 0
    assert exit_code([Result("a", "t", "SKIP", 0.0, "no GPU"), Result("b", "t", "FAIL", 1.0, "x", "y")]) == 1


# --------------------------------------------------------------------------- the checks fail on broken code


@pytest.fixture()
def quick_context(tmp_path):
    from senet.doctor.context import Context
    from senet.doctor.machine import describe

    return Context(describe(), QUICK_SIZES, str(tmp_path))


def run_named(ctx, name):
    from senet.doctor import CHECKS, run_check

    planned = {p.name: p for p in plan(ctx.machine)}[name]
    result = run_check(planned, ctx, CHECKS[name])
    ctx.status[name] = result.status
    return result


def test_checkpoint_resume_fails_when_the_optimizer_state_is_not_restored(quick_context, monkeypatch):
    import paddle

    assert run_named(quick_context, "checkpoint_resume").status == "PASS"
    monkeypatch.setattr(paddle.optimizer.Momentum, "set_state_dict", lambda self, state: None)
    result = run_named(quick_context, "checkpoint_resume")
    assert result.status == "FAIL"
    assert "the step after the resume differs from the uninterrupted one" in result.reason, result.reason


def test_engine_checks_fail_when_an_engine_is_off_by_1e_5(quick_context, monkeypatch):
    import numpy as np

    from senet.inference import Predictor

    assert run_named(quick_context, "fit").status == "PASS"
    assert run_named(quick_context, "export_onnxruntime").status == "PASS"
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, images: predict(self, images) * np.float32(1 + 1e-5))
    result = run_named(quick_context, "export_onnxruntime")
    assert result.status == "FAIL" and "x the measured noise" in result.reason, result.reason


# --------------------------------------------------------------------------- which checks a machine gets


def machine(gpus=(), cuda_build=None, tensorrt=False, dali=None, providers=("CPUExecutionProvider",), smi_gpus=None):
    """A stand-in description with the fields senet.doctor.plan reads (senet.doctor.machine.describe's shape)."""
    cuda_build = bool(gpus) if cuda_build is None else cuda_build
    return {
        "paddle": {
            "version": "3.3.1",
            "cuda_build": cuda_build,
            "cuda": "12.6" if cuda_build else None,
            "tensorrt_usable": tensorrt,
        },
        "gpus": [
            {"index": i, "name": name, "memory_gib": 80.0, "capability": cc, "multiprocessors": 108}
            for i, (name, cc) in enumerate(gpus)
        ],
        "nvidia_smi": {"found": bool(gpus), "gpus": len(gpus) if smi_gpus is None else smi_gpus},
        "packages": {"DALI": dali, "ONNX Runtime providers": list(providers)},
    }


def runs(m):
    return [p.name for p in plan(m) if p.skip is None]


def skips(m):
    return {p.name: p.skip for p in plan(m) if p.skip is not None}


CPU_RUNS = [
    "paddle_device",
    "train_fp32",
    "eval_nchw_nhwc",
    "checkpoint_resume",
    "fit",
    "fit_resume",
    "eval_weights",
    "export_paddle_inference",
    "export_onnxruntime",
    "launch_two_processes",
]
V100, A100 = ("Tesla V100-SXM2-32GB", "7.0"), ("NVIDIA A100-SXM4-80GB", "8.0")


def test_every_plan_lists_every_check_in_the_same_order():
    for m in (machine(), machine([V100]), machine([A100, A100], tensorrt=True, dali="nvidia-dali-cuda120 2.4.0")):
        assert [p.name for p in plan(m)] == ORDER


def test_no_gpu_runs_the_cpu_paths_and_skips_the_gpu_ones_with_the_reason():
    m = machine()
    assert runs(m) == CPU_RUNS
    s = skips(m)
    assert set(s) == GPU_ONLY | {"dali_pipeline"}
    assert "paddle.amp does nothing on a CPU" in s["train_amp_o1_fp16"] and "NCHW on a CPU" in s["train_nhwc"]
    assert "make install DALI=1" in s["dali_pipeline"]
    assert sizes(m) == CPU_SIZES and o2_dtype(m) == "float16"
    assert "fp32 + EMA" in {p.name: p.title for p in plan(m)}["fit"]
    assert "(gloo)" in {p.name: p.title for p in plan(m)}["launch_two_processes"]


def test_one_gpu_of_compute_capability_7_skips_bf16_and_the_two_gpu_launch():
    m = machine([V100])
    assert "train_amp_o2_bf16" not in runs(m) and "launch_two_processes" not in runs(m)
    assert runs(m) == [
        n for n in ORDER if n not in ("train_amp_o2_bf16", "export_tensorrt", "dali_pipeline", "launch_two_processes")
    ]
    s = skips(m)
    assert s["train_amp_o2_bf16"] == (
        f"GPU 0 ({V100[0]}) has compute capability 7.0; bf16 needs 8.0 or newer (the O2 checks below use fp16)"
    )
    assert s["launch_two_processes"] == "one GPU: a two-process launch needs two"
    assert "no usable TensorRT" in s["export_tensorrt"]
    assert o2_dtype(m) == "float16" and sizes(m) == GPU_SIZES
    titles = {p.name: p.title for p in plan(m)}
    for name in ("checkpoint_resume", "fit", "fit_resume"):  # the O2 paths that first fail on a GPU
        assert titles[name].startswith("AMP O2 fp16 + EMA"), titles[name]


def test_one_gpu_of_compute_capability_8_runs_bf16_and_the_o2_paths_in_bf16():
    m = machine([A100])
    assert "train_amp_o2_bf16" in runs(m) and "launch_two_processes" not in runs(m)
    assert o2_dtype(m) == "bfloat16"
    titles = {p.name: p.title for p in plan(m)}
    for name in ("checkpoint_resume", "fit", "fit_resume"):
        assert titles[name].startswith("AMP O2 bf16 + EMA"), titles[name]
    assert "end-of-epoch eval" in titles["fit"] and "(CUDA)" in titles["export_paddle_inference"]


def test_two_gpus_run_the_launch_on_both_with_nccl():
    m = machine([A100, A100])
    assert "launch_two_processes" in runs(m)
    assert "on GPUs 0 and 1 (AMP O2 bf16 + EMA, NCCL)" in {p.name: p.title for p in plan(m)}["launch_two_processes"]
    mixed = machine([V100, A100])  # the single-process checks use GPU 0: its capability decides bf16
    assert "train_amp_o2_bf16" not in runs(mixed) and o2_dtype(mixed) == "float16"


def test_tensorrt_runs_only_on_a_gpu_whose_paddle_has_it():
    assert "export_tensorrt" in runs(machine([A100], tensorrt=True))
    assert "export_tensorrt" not in runs(machine([A100], tensorrt=False))
    assert skips(machine(tensorrt=True))["export_tensorrt"] == "no GPU seen by Paddle"


def test_dali_runs_where_it_is_installed_on_the_gpu_or_the_cpu():
    dali = "nvidia-dali-cuda120 2.4.0"
    assert "dali_pipeline" in runs(machine(dali=dali)) and "dali_pipeline" in runs(machine([A100], dali=dali))
    assert "CPU pipeline" in {p.name: p.title for p in plan(machine(dali=dali))}["dali_pipeline"]
    assert "GPU decoder" in {p.name: p.title for p in plan(machine([A100], dali=dali))}["dali_pipeline"]
    assert "dali_pipeline" not in runs(machine([A100]))


def test_onnxruntime_uses_its_cuda_provider_only_on_a_gpu_that_has_it():
    with_cuda = machine([A100], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    titles = {p.name: p.title for p in plan(with_cuda)}
    assert "(CUDA provider)" in titles["export_onnxruntime"]
    assert "(CPU provider)" in {p.name: p.title for p in plan(machine([A100]))}["export_onnxruntime"]


def test_a_cpu_paddle_under_a_gpu_driver_still_checks_the_cpu_paths():
    """The device check fails (see above); the CPU paths are still worth checking."""
    assert runs(machine(cuda_build=False, smi_gpus=1)) == CPU_RUNS
    assert runs(machine(cuda_build=True)) == CPU_RUNS  # a CUDA build that sees no GPU runs on the CPU


def test_without_paddle_only_the_device_check_runs():
    m = machine()
    m["paddle"] = {"error": "import paddle failed: ImportError: libcudart.so.12: cannot open shared object file"}
    assert runs(m) == ["paddle_device"]
    assert set(skips(m).values()) == {"Paddle does not import (see paddle_device)"}


def test_the_device_check_names_what_is_wrong_and_the_fix(tmp_path):
    from senet.doctor.context import Context
    from senet.doctor.train_checks import check_paddle_device

    def outcome(m):
        m = {**m, "nvidia_smi": {**m["nvidia_smi"], "found": True}}
        return check_paddle_device(Context(m, CPU_SIZES, str(tmp_path)), None)

    cpu_build = outcome(machine(cuda_build=False, smi_gpus=2))
    assert cpu_build.status == "FAIL"
    assert "nvidia-smi lists 2 GPU(s) but Paddle 3.3.1 is the CPU build" in cpu_build.reason
    assert cpu_build.fix.startswith("rm -rf .venv && make install")
    blind = outcome(machine(cuda_build=True, smi_gpus=0))
    assert blind.status == "FAIL" and "built with CUDA 12.6 but sees no GPU" in blind.reason
    assert "CUDA_VISIBLE_DEVICES" in blind.fix
    old = machine([A100])
    old["nvidia_smi"]["cuda"] = "12.2"
    old_driver = outcome(old)
    assert (
        old_driver.status == "FAIL"
        and "the driver supports CUDA 12.2, older than this Paddle build's CUDA 12.6" in old_driver.reason
        and "update the NVIDIA driver" in old_driver.fix
    )
    broken = machine()
    broken["paddle"] = {"error": "import paddle failed: ImportError: x"}
    assert outcome(broken).status == "FAIL" and outcome(broken).reason == broken["paddle"]["error"]


def test_the_machine_lines_show_each_gpu_with_memory_and_capability():
    from senet.doctor.machine import lines

    m = machine([A100, V100], tensorrt=True, dali="nvidia-dali-cuda120 2.4.0")
    m.update(python="3.11.7", platform="Linux")
    m["paddle"].update(
        commit="7688495538f4", cudnn="9.5.1", nccl="2.21.5", mkl=True, onednn_bf16=True, tensorrt_runtime="10.5.0"
    )
    m["nvidia_smi"].update(driver="560.35.03", cuda="12.6")
    m["cpu"] = {
        "model": "AMD EPYC 7763",
        "logical_cores": 128,
        "usable_cores": 16,
        "features": {"AVX2": True, "AVX-512": False, "AVX512-BF16": False, "AMX": False, "VNNI": False},
    }
    m["packages"].update(
        {"OpenCV": "4.14.0.94", "ONNX Runtime": None, "paddle2onnx": "2.1.0", "VisualDL": "2.5.3", "numpy": "2.3.5"}
    )
    m["threads"] = {"OMP_NUM_THREADS": "16", "FLAGS_cudnn_exhaustive_search": True}
    text = "\n".join(lines(m))
    assert "paddle 3.3.1 (7688495538): CUDA 12.6, cuDNN 9.5.1, NCCL 2.21.5; Paddle Inference: TensorRT 10.5.0" in text
    assert "GPU 0: NVIDIA A100-SXM4-80GB, 80.0 GiB, compute capability 8.0, 108 SMs" in text
    assert "GPU 1: Tesla V100-SXM2-32GB, 80.0 GiB, compute capability 7.0" in text
    assert "nvidia-smi: 2 GPU(s), driver 560.35.03, CUDA 12.6" in text
    assert "CPU: AMD EPYC 7763, 16 usable of 128 logical cores; instruction sets: AVX2 yes, AVX-512 no" in text
    assert "ONNX Runtime not installed" in text and "DALI nvidia-dali-cuda120 2.4.0" in text
    assert "FLAGS_cudnn_exhaustive_search=True" in text
