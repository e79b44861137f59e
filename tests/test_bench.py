"""tools/bench.py end to end at tiny sizes, the memory probe child, the mode registry, and the timing and
summary logic."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from senet.bench import (
    EXPORTED,
    FIELDS,
    FP32,
    BenchOptions,
    Mode,
    ModelSpec,
    Task,
    Timed,
    alternate,
    default_options,
    format_summary,
    measure_peaks,
    mode_names,
    plan_models,
    register_mode,
    run_alternating,
    run_bench,
    run_probe,
    summary,
    task_record,
    unregister_mode,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny run through the command line: ResNet-18, SE, ECA and CBAM at 32 px, every mode and engine, the
    exported engines in fp32 and int8 (bf16 runs only on CPUs with bf16 instructions: tested apart)."""
    out = tmp_path_factory.mktemp("bench")
    args = [
        "-c",
        "resnet18",
        "se_resnet18",
        "eca_resnet18",
        "cbam_resnet18",
        "-o",
        "model.num_classes=10",
        "--reductions",
        "8",
        "--sweep-modes",
        "latency",
        "--image-size",
        "32",
        "--train-batch",
        "2",
        "--infer-batch",
        "2",
        "--repeats",
        "2",
        "--latency-calls",
        "2",
        "--loader-images",
        "8",
        "--out",
        str(out),
        "--keep-export",
        "--precisions",
        "fp32",
        "int8",
        "--calibration-images",
        "4",
        "--no-memory",
    ]  # the probes are tested below: a child process each is too slow here
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "bench.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("se_resnet18 r=16", "eca_resnet18", "cbam_resnet18"):
        assert f"train step time ratio, {name}, dygraph" in proc.stdout
    (folder,) = os.listdir(out)
    return os.path.join(out, folder)


def test_outputs_have_the_promised_fields(run_dir):
    assert {
        "results.json",
        "results.csv",
        "report.md",
        "throughput_vs_params.png",
        "se_overhead_vs_r.png",
        "export",
    } <= set(os.listdir(run_dir))
    data = json.load(open(os.path.join(run_dir, "results.json")))
    env = data["environment"]
    for key in ("paddle_version", "device", "threads", "cpu_model", "cores", "load_average_start"):
        assert env[key] is not None, key
    assert data["data_loader"]["loader_images_per_s"] > 0 and data["data_loader"]["plain_images_per_s"] > 0
    records = data["results"]
    for r in records:
        assert set(FIELDS) <= set(r)
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["latency_ms"] > 0 and r["params"] > 0 and r["gmacs"] > 0 and r["image_size"] == 32
        assert r["peak_memory_mb"] is None  # --no-memory
        assert r["attention"] == {"se_resnet18": "se", "eca_resnet18": "eca", "cbam_resnet18": "cbam"}.get(r["model"])
        assert (r["reduction"] is None) == (r["model"] in ("resnet18", "paddle.vision.resnet18", "eca_resnet18"))
    seen = {(r["name"], r["mode"], r["engine"]) for r in records}
    attention = ("se_resnet18 r=16", "eca_resnet18", "cbam_resnet18")  # each at its config's settings
    for engine in ("dygraph", "paddle_inference", "onnxruntime", "openvino"):
        for mode in ("latency", "infer"):
            assert {(n, mode, engine) for n in ("resnet18", *attention)} <= seen
    # int8 on the engines that run the int8 export, never on dygraph or Paddle Inference
    precisions = {(r["engine"], r["precision"]) for r in records}
    assert precisions == {
        ("dygraph", "fp32"),
        ("paddle_inference", "fp32"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
        ("openvino", "int8"),
    }
    for r in records:  # ratios against the plain model of the same engine and precision
        assert r["overhead_vs_plain"] == 1.0 or r["name"] != "resnet18"
    assert data["limit"]["read_gb_per_s"] > 0.1 and data["limit"]["threads"] >= 1
    assert set(env["cpu_features"]) == {"AVX2", "AVX-512", "AVX512-BF16", "AMX", "VNNI"}
    assert {(n, "train", "dygraph") for n in ("resnet18", "paddle.vision resnet18", *attention)} <= seen
    assert ("se_resnet18 r=8", "latency", "dygraph") in seen
    # the sweep r only where asked, the reference only in dygraph
    assert not [k for k in seen if k[0] == "se_resnet18 r=8" and k[1:] != ("latency", "dygraph")]
    assert not [k for k in seen if k[0].startswith("paddle.vision") and k[2] != "dygraph"]
    for r in records:  # a plain model is its own baseline; attention models and reference are compared with resnet18
        assert r["plain_model"] == "resnet18" and r["overhead_vs_plain"] > 0
        assert r["overhead_vs_plain"] == 1.0 or r["name"] != "resnet18"
    assert set(data["summary"]["gmacs_increase"]) == set(attention)
    assert all(v > 0 for v in data["summary"]["gmacs_increase"].values())
    assert set(data["summary"]["train_ratio"]) == {f"{n}, dygraph" for n in attention}
    assert {f"{n}, openvino int8 NCHW" for n in attention} <= set(data["summary"]["latency_ratio"])
    with open(os.path.join(run_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and list(rows[0]) == FIELDS
    report = open(os.path.join(run_dir, "report.md")).read()
    for text in (
        "190 -> 209 ms",
        "164 -> 167 ms",
        "+0.26%",
        "paddle.vision",
        "## Data loader",
        "throughput_vs_params.png",
        "SE, ECA and CBAM",
        "train step time, eca_resnet18, dygraph",
        "batch-1 latency, cbam_resnet18, paddle_inference",
        "4.7e-4 extra GFLOPs",
        "3.864 GFLOPs",
        "## Engines and precisions",
        "| model | dygraph fp32 | paddle_inference fp32 | onnxruntime fp32 | "
        "onnxruntime int8 | openvino fp32 | openvino int8 |",
        "| se_resnet18 r=16 / resnet18 (time) |",
        "| limit: resnet18's weights read once, ms |",
        "instruction sets: AVX2 ",
    ):
        assert text in report, text


def test_compare_reads_the_bench_throughput(run_dir):
    from senet.compare import _bench_throughput

    assert _bench_throughput(run_dir) > 0


def test_memory_probes_fill_every_record(run_dir, monkeypatch):
    """One probe per model, engine and precision, its modes in registry order; each record gets its mode's peak.
    The probes are planned from the records and options alone (no run object: issue 24's import circle)."""
    from senet.bench import memory, plan_probes, probe_memory

    data = json.load(open(os.path.join(run_dir, "results.json")))
    specs = plan_models(["resnet18", "se_resnet18", "eca_resnet18", "cbam_resnet18"], ["model.num_classes=10"], [8])
    probes = plan_probes(data["results"], specs, [FP32], default_options(), 2, {}, "cpu")
    payloads = []

    def fake_probe(payload):
        payloads.append(payload)
        return {"kind": "rss", "peak_mb": {m: 100.0 * (i + 1) for i, m in enumerate(payload["modes"])}}

    monkeypatch.setattr(memory, "run_probe", fake_probe)
    assert probe_memory(probes, 2, lambda s: None) == []
    # 6 dygraph models (incl. the r=8 sweep and paddle.vision); 4 on Paddle Inference; 4 x fp32, int8 on the others
    assert len(payloads) == 6 + 4 + 2 * 2 * 4
    assert all(p["modes"] == [m for m in mode_names() if m in p["modes"]] for p in payloads)
    assert {tuple(p["modes"]) for p in payloads} == {("latency", "infer", "train"), ("latency",), ("latency", "infer")}
    assert {p["variant"]["inference"] for p in payloads if p["engine"] == "openvino"} == {"fp32", "int8"}
    assert all(
        p["hint"] == {m: {"latency": "latency", "infer": "throughput"}.get(m, "latency") for m in p["modes"]}
        for p in payloads
    )
    for r in data["results"]:
        modes = next(
            p["modes"]
            for p in payloads
            if p["spec"]["name"] == r["name"]
            and p["engine"] == r["engine"]
            and p["variant"]["inference"] == (r["precision"] if r["engine"] != "dygraph" else "fp32")
        )
        assert r["peak_memory_mb"] == 100.0 * (modes.index(r["mode"]) + 1) and r["memory_kind"] == "rss"


def test_memory_probe_child(run_dir):
    """Peaks of fresh processes, one mode each: a training step holds the gradients and the momentum
    buffers beside the weights, so its peak exceeds inference's by at least twice the weights; ONNX
    Runtime carries no Paddle. (Two modes in one process would prove nothing: the figure is a
    high-water mark, so the second is never below the first.)"""
    (spec,) = [s for s in plan_models(["resnet18"], ["model.num_classes=10"], [], reference=False)]
    payload = {
        "spec": spec.__dict__,
        "variant": FP32.__dict__,
        "engine": "dygraph",
        "modes": ["latency"],
        "batch": {"latency": 1, "train": 2},
        "hint": {"latency": "latency", "train": "latency"},
        "image_size": 32,
        "threads": 1,
        "model_dir": None,
        "seed": 0,
        "device": "cpu",
    }
    latency, train = run_probe(payload), run_probe(dict(payload, modes=["train"]))
    assert latency["kind"] == train["kind"] == "rss" and latency["peak_mb"]["latency"] > 100
    weights_mb = 11_181_642 * 4 / 2**20  # resnet18 with 10 classes, float32
    assert train["peak_mb"]["train"] - latency["peak_mb"]["latency"] >= 2 * weights_mb, (train, latency)
    onnx = run_probe(
        dict(payload, engine="onnxruntime", modes=["latency"], model_dir=os.path.join(run_dir, "export", "resnet18"))
    )
    assert "error" not in onnx, onnx
    assert onnx["peak_mb"]["latency"] < latency["peak_mb"]["latency"]


# --------------------------------------------------------------------------- logic, no Paddle work


def test_plan_models_sweep_reference_and_errors():
    specs = plan_models(["configs/resnet50.yaml", "configs/se_resnet50.yaml"], [], [2, 4, 8, 16, 32])
    assert [s.name for s in specs] == ["resnet50"] + [f"se_resnet50 r={r}" for r in (2, 4, 8, 16, 32)] + [
        "paddle.vision resnet50"
    ]
    assert [s.sweep for s in specs] == [False, True, True, True, False, True, False]
    assert all(s.plain == "resnet50" for s in specs)
    assert specs[4].cfg["model"]["se"]["reduction"] == 16 and specs[1].cfg["model"]["se"]["reduction"] == 2
    assert [s.name for s in plan_models(["resnet20", "se_resnet20"], ["model.se.reduction=4"], [8])] == [
        "resnet20",
        "se_resnet20 r=4",
        "se_resnet20 r=8",
    ]  # paddle.vision has no resnet20
    with pytest.raises(ValueError, match="unknown model.arch 'se_resnet5O'"):
        plan_models(["se_resnet5O"], [], [])
    with pytest.raises(ValueError, match="two models are named"):
        plan_models(["resnet50", "resnet50"], [], [])


def test_default_run_and_full_sizes():
    d, f = default_options(), default_options(full=True)
    assert (d.train_batch, d.image_size, d.reductions) == (4, 224, [2, 4, 8, 16, 32])
    assert (d.infer_batch, d.repeats, d.latency_calls, d.sweep_modes) == (4, 4, 5, ["latency"])  # 10 min on a CPU
    assert (f.train_batch, f.image_size, f.sweep_modes) == (256, 224, ["latency", "infer", "train"])


def test_models_alternate_and_ratios_pair_rounds():
    order: list[str] = []
    spec = ModelSpec("a", "resnet20", {})
    tasks = [
        Task(ModelSpec(n, "resnet20", {}), "infer", "dygraph", FP32, 4, (lambda n=n: order.append(n) or np.zeros(1)))
        for n in "ABC"
    ]
    run_alternating(tasks, calls=2, per_call=False, warmup_rounds=1, repeats=3)
    # warm-up, then A B C in turns, reversed every other round
    assert order == list("AABBCC") + list("AABBCC") + list("CCBBAA") + list("AABBCC")
    assert all(len(t.rounds) == 3 and len(t.rounds[0]) == 1 for t in tasks)
    plain = Task(spec, "infer", "dygraph", FP32, 4, rounds=[[1.0], [2.0], [1.0]])
    se = Task(
        ModelSpec("b", "se_resnet20", {}, reduction=16, plain="a"),
        "infer",
        "dygraph",
        FP32,
        4,
        rounds=[[1.1], [2.2], [1.3]],
    )  # the slow second round hits both: the paired ratio stays ~1.1
    r = task_record(se, plain, 32, default_options(), "cpu", 2, 1)
    assert r["overhead_vs_plain"] == pytest.approx(1.1) and r["overhead_max"] == pytest.approx(1.3)
    assert r["images_per_s"] == pytest.approx(4 / 1.3) and r["images_per_s_min"] == pytest.approx(4 / 2.2)
    assert r["latency_ms"] == pytest.approx(1300)
    latency = Task(spec, "latency", "dygraph", FP32, 1, rounds=[[0.1, 0.3, 0.2]])
    assert task_record(latency, latency, 32, default_options(), "cpu", 2, 3)["latency_ms"] == pytest.approx(200)


def test_interleaved_latency_takes_turns_call_by_call_and_reverses_rounds():
    """Dygraph latency (per_call with interleave_calls): A B C per call, C B A per call in odd rounds."""
    order: list[str] = []
    tasks = [
        Task(ModelSpec(n, "resnet20", {}), "latency", "dygraph", FP32, 1, (lambda n=n: order.append(n) or np.zeros(1)))
        for n in "ABC"
    ]
    run_alternating(tasks, calls=2, per_call=True, warmup_rounds=1, repeats=3, interleave_calls=True)
    warmup = list("AABBCC")  # each model's warm-up round on its own
    assert order == warmup + list("ABCABC") + list("CBACBA") + list("ABCABC")
    assert all(len(t.rounds) == 3 and all(len(r) == 2 for r in t.rounds) for t in tasks)
    order.clear()  # the exported engines keep a model's calls together, in the same alternating order
    run_alternating(tasks, calls=2, per_call=True, warmup_rounds=0, repeats=2, interleave_calls=False)
    assert order == list("AABBCC") + list("CCBBAA")


def test_interleaved_rounds_keep_each_models_own_samples(monkeypatch):
    """Samples land on the task that made them, also in the reversed rounds: A's calls take 1 s, B's 2 s."""
    from senet.bench import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])  # a clock that only the calls move

    def call(seconds):
        now[0] += seconds
        return np.zeros(1)

    tasks = [
        Task(ModelSpec(n, "resnet20", {}), "latency", "dygraph", FP32, 1, (lambda s=s: call(s)))
        for n, s in (("A", 1.0), ("B", 2.0))
    ]
    run_alternating(tasks, calls=3, per_call=True, warmup_rounds=0, repeats=2, interleave_calls=True)
    assert tasks[0].rounds == [[1.0] * 3, [1.0] * 3] and tasks[1].rounds == [[2.0] * 3, [2.0] * 3]


def test_speedup_compares_the_same_precision_only():
    """On a GPU: exported fp32 NCHW is set against fp32 dygraph, never AMP dygraph; no fp32 dygraph, no figure."""
    base = {
        "sweep": False,
        "reference": False,
        "gmacs": None,
        "reduction": None,
        "overhead_vs_plain": 1.0,
        "plain_model": None,
        "name": "resnet50",
        "mode": "latency",
        "attention": None,
    }
    amp = dict(base, engine="dygraph", precision="amp-O1-float16", data_format="NCHW", latency_ms=5.0)
    amp_nhwc = dict(amp, data_format="NHWC", latency_ms=4.0)
    exported = dict(base, engine="paddle_inference", precision="fp32", data_format="NCHW", latency_ms=10.0)
    assert summary([amp, amp_nhwc, exported])["engine_speedup"] == {}  # the AMP records come first
    fp32 = dict(amp, precision="fp32", latency_ms=30.0)
    fp32_nhwc = dict(fp32, data_format="NHWC", latency_ms=20.0)
    s = summary([amp, fp32_nhwc, amp_nhwc, fp32, exported])["engine_speedup"]
    assert s == {"latency, resnet50, paddle_inference fp32 NCHW over dygraph fp32 NCHW": 3.0}


def test_gpu_run_without_fp32_dygraph_says_there_is_no_speedup():
    from senet.bench import resolve_variants

    notices: list[str] = []
    opts = default_options()
    opts.dtypes = ["float16"]  # bfloat16 would ask the (absent) GPU whether it supports it
    variants = resolve_variants(opts, True, notices)
    assert FP32 not in variants and any("no speed-up over dygraph" in n for n in notices)
    notices.clear()
    opts.amp = ["none", "O1"]
    assert FP32 in resolve_variants(opts, True, notices) and notices == []


def test_bench_options_threads_sets_the_run(monkeypatch, tmp_path):
    """BenchOptions.threads decides Paddle's thread count and what the run records."""
    import paddle

    import senet.bench as bench
    from senet.bench import run as run_module
    from senet.runtime import cpu_count, env_threads, setup_cpu

    calls: list[int] = []
    real = paddle.base.core.set_num_threads
    monkeypatch.setattr(paddle.base.core, "set_num_threads", lambda n: calls.append(n) or real(n))
    monkeypatch.setattr(run_module, "on_gpu", lambda: False)
    try:
        run = bench.Run(
            bench.BenchOptions(configs=["resnet18"], reference=False, reductions=[], threads=1, out_root=str(tmp_path)),
            lambda s: None,
        )
        assert run.threads == 1 and run.env["threads"] == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert calls == [1] and "with 1 threads" in run.notices[0]
    finally:
        setup_cpu(0)  # back to the test process's setting
    assert calls[-1] == (env_threads() or cpu_count())  # SENET_THREADS, else every core


def test_summary_figures():
    base = {
        "precision": "fp32",
        "data_format": "NCHW",
        "sweep": False,
        "reference": False,
        "gmacs": None,
        "attention": None,
        "mode": "train",
        "engine": "dygraph",
        "reduction": None,
        "plain_model": "resnet50",
    }
    records = [
        dict(base, name="resnet50", overhead_vs_plain=1.0, plain_model=None, latency_ms=100.0, gmacs=3.86),
        dict(
            base,
            name="se_resnet50 r=16",
            attention="se",
            reduction=16,
            overhead_vs_plain=1.04,
            latency_ms=104.0,
            gmacs=3.87,
        ),
        dict(
            base,
            name="se_resnet50 r=2",
            attention="se",
            reduction=2,
            sweep=True,
            overhead_vs_plain=1.2,
            latency_ms=120.0,
        ),
        dict(base, name="eca_resnet50", attention="eca", overhead_vs_plain=1.02, latency_ms=102.0, gmacs=3.8601),
        dict(base, name="cbam_resnet50", attention="cbam", reduction=16, overhead_vs_plain=1.3, latency_ms=130.0),
        dict(base, name="paddle.vision resnet50", reference=True, overhead_vs_plain=1.01, latency_ms=101.0),
        dict(base, name="resnet50", mode="latency", overhead_vs_plain=1.0, plain_model=None, latency_ms=50.0),
        dict(
            base,
            name="resnet50",
            mode="latency",
            engine="paddle_inference",
            overhead_vs_plain=1.0,
            plain_model=None,
            latency_ms=20.0,
        ),
    ]
    s = summary(records)
    # each attention model at its config's settings, not the sweep's r=2
    assert s["train_ratio"] == {
        "se_resnet50 r=16, dygraph": 1.04,
        "eca_resnet50, dygraph": 1.02,
        "cbam_resnet50, dygraph": 1.3,
    }
    assert s["parity"] == {"train, resnet50 / paddle.vision resnet50, dygraph": 1.01}
    assert s["engine_speedup"] == {"latency, resnet50, paddle_inference fp32 NCHW over dygraph fp32 NCHW": 2.5}
    assert s["gmacs_increase"] == pytest.approx(
        {"se_resnet50 r=16": 3.87 / 3.86 - 1, "eca_resnet50": 3.8601 / 3.86 - 1}
    )
    from senet.bench.report import _headline

    rows = [ln for ln in _headline(records, s) if ln.startswith("| train step time")]
    # the issue-5 target and Hu et al.'s figure are SE's: the ECA and CBAM rows name their model and have neither
    assert rows == [
        "| train step time, se_resnet50 r=16, dygraph | x1.040 | <= 1.05 | x1.10 (190 -> 209 ms per 256 "
        "images, GPUs) |",
        "| train step time, eca_resnet50, dygraph | x1.020 | - | - |",
        "| train step time, cbam_resnet50, dygraph | x1.300 | - | - |",
    ]


def test_plan_models_eca_and_cbam_run_at_their_configs_settings():
    """The r sweep is SE's; ECA and CBAM are one model each, compared with the plain model of their base arch."""
    specs = plan_models(
        ["resnet20", "se_resnet20", "eca_resnet20", "cbam_resnet20"],
        ["model.cbam.reduction=8"],
        [4, 16],
        reference=False,
    )
    assert [(s.name, s.attention, s.reduction, s.sweep, s.plain) for s in specs] == [
        ("resnet20", None, None, False, "resnet20"),
        ("se_resnet20 r=4", "se", 4, True, "resnet20"),
        ("se_resnet20 r=16", "se", 16, False, "resnet20"),
        ("eca_resnet20", "eca", None, False, "resnet20"),
        ("cbam_resnet20", "cbam", 8, False, "resnet20"),
    ]
    assert default_options().configs[2:] == [
        os.path.join(ROOT, "configs", f) for f in ("eca_resnet50.yaml", "cbam_resnet50.yaml")
    ]


def test_train_mode_times_the_trainers_step(monkeypatch):
    """The train runner calls senet.step.train_step (nothing of its own) and returns the loss the clock waits for."""
    from senet import step
    from senet.bench import build, get_mode
    from senet.bench.modes import synthetic_batch

    calls = []
    real = step.train_step
    monkeypatch.setattr(step, "train_step", lambda parts, x, y: calls.append(parts) or real(parts, x, y))
    (spec,) = plan_models(["resnet20"], ["model.num_classes=10"], [], reference=False)
    images, labels = synthetic_batch(2, 32, 10, 0)
    model = build(spec)
    before = [p.numpy().copy() for p in model.parameters()]
    loss = get_mode("train").runner(model, spec, FP32, images, labels)()
    assert len(calls) == 1 and calls[0].model is model and calls[0].amp is None and calls[0].scaler is None
    assert np.isfinite(float(loss)) and any((b != p.numpy()).any() for b, p in zip(before, model.parameters()))


def test_a_new_mode_is_one_registry_entry(tmp_path):
    """A toy mode, registered from outside the package, is timed, recorded, summarised, reported and probed."""
    import paddle

    built = []

    def toy_runner(model, spec, variant, images, labels):
        x = paddle.to_tensor(images).astype("float32").transpose([0, 3, 1, 2])
        built.append(spec.name)
        model.eval()
        return lambda: model(x)

    mode = register_mode(Mode("toy", toy_runner, batch="infer_batch", calls="steps", title="toy forward time"))
    try:
        assert mode_names()[-1] == "toy" and BenchOptions().modes[-1] == "toy"
        with pytest.raises(ValueError, match="registered already"):
            register_mode(mode)
        opts = BenchOptions(
            configs=["resnet20", "se_resnet20"],
            overrides=["model.num_classes=10"],
            reductions=[],
            reference=False,
            modes=["toy"],
            engines=["dygraph", "onnxruntime", "openvino"],
            image_size=32,
            infer_batch=3,
            warmup_rounds=0,
            repeats=2,
            memory=False,
            loader_images=0,
            out_root=str(tmp_path),
        )
        run_dir = run_bench(opts, log=lambda s: None)
        assert built == ["resnet20", "se_resnet20 r=16"]  # dygraph only: the mode is not an exported one
        data = json.load(open(os.path.join(run_dir, "results.json")))
        assert [(r["name"], r["mode"], r["engine"], r["batch_size"], r["repeats"]) for r in data["results"]] == [
            ("resnet20", "toy", "dygraph", 3, 2),
            ("se_resnet20 r=16", "toy", "dygraph", 3, 2),
        ]
        assert list(data["summary"]["toy_ratio"]) == ["se_resnet20 r=16, dygraph"]
        assert "| toy forward time, se_resnet20 r=16, dygraph | x" in open(os.path.join(run_dir, "report.md")).read()
        assert "toy forward time ratio, se_resnet20 r=16, dygraph: x" in format_summary(run_dir)
        spec = plan_models(["resnet20"], ["model.num_classes=10"], [], reference=False)[0]
        peaks = measure_peaks(
            {
                "spec": spec.__dict__,
                "variant": FP32.__dict__,
                "engine": "dygraph",
                "modes": ["latency", "toy"],
                "batch": {"latency": 1, "toy": 3},
                "hint": {"latency": "latency", "toy": "latency"},
                "image_size": 32,
                "threads": 1,
                "model_dir": None,
                "seed": 0,
                "device": "cpu",
            }
        )
        # The probe ran the toy mode's own runner (not only the latency one) and read a peak after it. (Its
        # figure is a high-water mark of this process, so comparing the two modes here would prove nothing.)
        assert built[-1] == "resnet20" and len(built) == 3
        assert peaks["kind"] == "rss" and set(peaks["peak_mb"]) == {"latency", "toy"} and peaks["peak_mb"]["toy"] > 0
    finally:
        unregister_mode("toy")
    assert "toy" not in mode_names()


def test_the_scripts_alternation_settles_and_reverses(monkeypatch):
    """alternate (scripts/bench_se_block.py, bench_export.py): settle calls untimed before each timed one, rounds
    reversed every other time, one ms sample per round."""
    from senet.bench import timing

    now, order = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing.time, "sleep", lambda s: order.append("pause"))

    def fn(name, seconds):
        def call():
            order.append(name)
            now[0] += seconds

        return call

    times = alternate({"A": fn("A", 0.001), "B": fn("B", 0.002)}, iters=2, warmup=1, settle_calls=1, pause_s=0.3)
    assert order == ["A", "B"] + ["pause", "A", "A", "pause", "B", "B"] + ["pause", "B", "B", "pause", "A", "A"]
    assert times["A"] == pytest.approx([1.0, 1.0]) and times["B"] == pytest.approx([2.0, 2.0])
    assert Timed("x", lambda: None).samples_ms() == []


def test_the_bench_modules_import_one_way():
    """Issue 24: no import circle inside senet/bench (memory <-> run and modes <-> options <-> plan were two),
    counting the imports under TYPE_CHECKING too: data is passed, not the run object."""
    import ast

    folder = os.path.join(ROOT, "senet", "bench")
    names = [f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"]
    graph = {}
    for name in names:
        tree = ast.parse(open(os.path.join(folder, name + ".py")).read())
        graph[name] = {
            n.module.split(".")[2]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            and n.module
            and n.module.startswith("senet.bench.")
            and n.module.split(".")[2] in names
        }

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(m, goal, (*seen, m))) for m in graph[start])

    assert graph["memory"] and graph["options"]  # the walk sees imports at all
    circles = sorted(name for name in names if reaches(name, name))
    assert circles == [], {n: sorted(graph[n]) for n in circles}


def test_bf16_is_measured_only_where_the_cpu_has_it(monkeypatch):
    """bf16 on the exported engines that run it, where the CPU has AVX512-BF16 or AMX; elsewhere one notice naming
    them (oneDNN and OpenVINO would emulate it, slower than fp32), and the other precisions as asked."""
    from senet import isa
    from senet.bench import exported_variants

    opts = default_options()
    with_bf16 = {"AVX2": True, "AVX-512": True, "AVX512-BF16": True, "AMX": False, "VNNI": True}
    monkeypatch.setattr(isa, "features", lambda flags=None: with_bf16)
    notices: list[str] = []
    assert [v.precision for v in exported_variants(opts, "openvino", notices)] == ["fp32", "bf16", "int8"]
    assert [v.precision for v in exported_variants(opts, "paddle_inference", notices)] == ["fp32", "bf16"]
    assert [v.precision for v in exported_variants(opts, "onnxruntime", notices)] == ["fp32", "int8"]
    assert notices == []
    monkeypatch.setattr(isa, "features", lambda flags=None: dict(with_bf16, **{"AVX512-BF16": False}))
    for engine in ("openvino", "paddle_inference"):
        assert "bf16" not in [v.precision for v in exported_variants(opts, engine, notices)]
    assert notices == [
        "this CPU has no AVX512-BF16 or AMX: bf16 is not measured (it would be emulated, slower than fp32)"
    ]


def test_auto_is_each_engines_fastest_native_precision(monkeypatch):
    """--precisions auto measures what tools/infer.py --precision auto would run on each engine, and names it."""
    from senet import isa
    from senet.bench import exported_variants

    opts = default_options()
    opts.precisions = ["auto"]
    xeon = {"AVX2": True, "AVX-512": True, "AVX512-BF16": False, "AMX": False, "VNNI": True}  # this repo's CPU
    monkeypatch.setattr(isa, "features", lambda flags=None: xeon)
    notices: list[str] = []
    picked = {e: [v.precision for v in exported_variants(opts, e, notices)] for e in EXPORTED}
    assert picked == {"paddle_inference": ["fp32"], "onnxruntime": ["int8"], "openvino": ["int8"]}
    assert (
        notices[0]
        == "paddle_inference: precision auto: fp32 (int8: paddle does not run it; bf16: no AVX512-BF16 or AMX)"
    )
    monkeypatch.setattr(isa, "features", lambda flags=None: dict(xeon, AMX=True))
    opts.precisions = ["fp32", "auto"]  # auto beside an explicit precision: each measured once
    assert [v.precision for v in exported_variants(opts, "paddle_inference", [])] == ["fp32", "bf16"]
    assert [v.precision for v in exported_variants(opts, "openvino", [])] == ["fp32", "int8"]


def test_limit_line_and_engine_tables():
    """The limit line is params x bytes per weight / bandwidth; the engines x precisions table puts each model's
    figure in its own engine-and-precision column and each attention model's ratio in a row of its own."""
    from senet.bench import measure_bandwidth, weights_read_ms
    from senet.bench.report import engine_tables

    assert weights_read_ms(25_000_000, "fp32", 10.0) == pytest.approx(10.0)  # 100 MB at 10 GB/s
    assert weights_read_ms(25_000_000, "bf16", 10.0) == pytest.approx(5.0)
    assert weights_read_ms(25_000_000, "int8", 10.0) == pytest.approx(2.5)
    bw = measure_bandwidth(1, buffer_mb=64, passes=2)
    assert 0.1 < bw["read_gb_per_s"] < 1000 and bw["threads"] == 1
    base = {
        "sweep": False,
        "reference": False,
        "mode": "latency",
        "batch_size": 1,
        "plain_model": "resnet50",
        "params": 25_000_000,
    }
    records = [
        dict(
            base,
            name="resnet50",
            engine="openvino",
            precision="fp32",
            latency_ms=30.0,
            attention=None,
            overhead_vs_plain=1.0,
        ),
        dict(
            base,
            name="se_resnet50 r=16",
            engine="openvino",
            precision="fp32",
            latency_ms=36.0,
            attention="se",
            overhead_vs_plain=1.2,
        ),
        dict(
            base,
            name="resnet50",
            engine="openvino",
            precision="int8",
            latency_ms=10.0,
            attention=None,
            overhead_vs_plain=1.0,
        ),
        dict(
            base,
            name="se_resnet50 r=16",
            engine="openvino",
            precision="int8",
            latency_ms=13.0,
            attention="se",
            overhead_vs_plain=1.3,
        ),
    ]
    lines = engine_tables(records, {"read_gb_per_s": 10.0, "threads": 2, "buffer_mb": 512, "passes": 5})
    assert "| model | openvino fp32 | openvino int8 |" in lines
    assert "| resnet50 | 30.0 | 10.0 |" in lines and "| se_resnet50 r=16 | 36.0 | 13.0 |" in lines
    assert "| se_resnet50 r=16 / resnet50 (time) | 1.200 | 1.300 |" in lines
    assert "| limit: resnet50's weights read once, ms | 10.0 | 2.5 |" in lines
    assert "| limit: se_resnet50 r=16's weights read once, ms | 10.0 | 2.5 |" in lines  # the same params here
