"""The run: time every planned model in every mode, engine and variant; record, probe memory, report.

Order: the memory bandwidth (the limit line) and the data loader, then per variant each dygraph mode
in registry order (each group of models built fresh and freed after), then the exported engines,
each in each precision it runs here (fp32, bf16 where the CPU has it, int8 from an int8 export),
then the memory probes. results.json is rewritten after every group, so a stopped run keeps what it
measured.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from senet.bench.bandwidth import measure_bandwidth
from senet.bench.environment import environment, have, loadavg
from senet.bench.memory import plan_probes, probe_memory, probe_parallelism
from senet.bench.modes import Mode, get_mode, mode_names, synthetic_batch
from senet.bench.options import EXPORTED, BenchOptions, exported_variants, resolve_variants
from senet.bench.plan import FP32, ModelSpec, Variant, build, plan_models, profile
from senet.bench.report import summary, write_outputs, write_text
from senet.bench.timing import on_gpu, run_alternating
from senet.config import DEFAULTS
from senet.data.fake import make_fake_imagenet
from senet.inference import Predictor
from senet.runtime import cpu_count, setup_cpu


@dataclass
class Task:
    """One model in one mode on one engine: its timing samples, round by round."""

    spec: ModelSpec
    mode: str
    engine: str
    variant: Variant
    batch_size: int
    run: Callable[[], Any] | None = None
    rounds: list[list[float]] = field(default_factory=list)  # seconds per step (per call in latency mode)

    @property
    def name(self) -> str:  # for run_alternating's log
        return self.spec.name


def task_record(
    task: Task, plain: Task | None, image_size: int, opts: BenchOptions, device: str, threads: int, calls: int
) -> dict:
    """One results.json record. Times are per step (per call in latency mode)."""
    samples = [s for r in task.rounds for s in r]
    med, lo, hi = statistics.median(samples), min(samples), max(samples)
    b = task.batch_size
    ratios = None
    if plain is not None and len(plain.rounds) == len(task.rounds):
        ratios = [statistics.median(a) / statistics.median(p) for a, p in zip(task.rounds, plain.rounds)]
    s = task.spec
    return {
        "model": f"paddle.vision.{s.arch}" if s.reference else s.arch,
        "reduction": s.reduction,
        "name": s.name,
        "reference": s.reference,
        "sweep": s.sweep,
        "mode": task.mode,
        "engine": task.engine,
        "precision": task.variant.precision,
        "data_format": task.variant.data_format,
        "device": device,
        "threads": threads,
        "batch_size": b,
        "image_size": image_size,
        "images_per_s": b / med,
        "images_per_s_min": b / hi,
        "images_per_s_max": b / lo,
        "latency_ms": 1e3 * med,
        "latency_ms_min": 1e3 * lo,
        "latency_ms_max": 1e3 * hi,
        "overhead_vs_plain": statistics.median(ratios) if ratios else None,
        "overhead_min": min(ratios) if ratios else None,
        "overhead_max": max(ratios) if ratios else None,
        "plain_model": s.plain,
        "peak_memory_mb": None,
        "memory_kind": None,
        "params": None,
        "gmacs": None,
        "warmup_rounds": opts.warmup_rounds,
        "repeats": len(task.rounds),
        "calls_per_round": calls,
        "attention": s.attention,
        "samples_s": samples,
    }


class Run:
    """The state of one `make bench` run: options, models, records, notices, output folder."""

    def __init__(self, opts: BenchOptions, log: Callable[[str], None]) -> None:
        self.opts, self.log = opts, log
        self.gpu = on_gpu()
        self.device = "gpu" if self.gpu else "cpu"
        # Paddle's math libraries and the predictors; each memory probe gets threads / probes at once.
        self.threads = setup_cpu(opts.threads)
        self.notices: list[str] = []
        self.specs = plan_models(opts.configs, opts.overrides, opts.reductions, opts.reference)
        self.variants = resolve_variants(opts, self.gpu, self.notices)
        self.records: list[dict] = []
        self.profiles: dict[str, dict] = {}
        self.loader: dict | None = None
        self.exports: dict[str, str] = {}  # spec name -> exported model folder
        self.limit: dict | None = None  # the memory-bandwidth limit line (senet.bench.bandwidth)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.dir = os.path.join(opts.out_root, stamp)
        n = 1
        while os.path.exists(self.dir):
            n += 1
            self.dir = os.path.join(opts.out_root, f"{stamp}-{n}")
        os.makedirs(self.dir)
        self.env = environment(self.threads, self.gpu)

    def notice(self, message: str) -> None:
        self.notices.append(message)
        self.log(f"notice: {message}")

    def wanted(self, spec: ModelSpec, mode: str, engine: str, variant: Variant) -> bool:
        """Is (model, mode, engine, variant) part of this run? See BenchOptions for the rules."""
        if mode not in self.opts.modes or engine not in self.opts.engines:
            return False
        if engine != "dygraph" and not get_mode(mode).exported:
            return False
        if spec.reference and (engine != "dygraph" or variant.data_format != "NCHW"):
            return False  # paddle.vision's ResNet is NCHW only; it is a dygraph parity check
        if spec.sweep and (mode not in self.opts.sweep_modes or (engine != "dygraph" and not self.opts.sweep_engines)):
            return False
        if engine == "dygraph":
            return variant.inference == "fp32"
        return variant.amp == "none" and variant.data_format == "NCHW"  # the exported graphs are NCHW

    def timed(self, tasks: list[Task], mode: Mode) -> None:
        """Time a group of tasks of one mode, engine and variant in turns; add their records."""
        if not tasks:
            return
        t0 = tasks[0]
        self.log(
            f"[{mode.name} | {t0.engine} | {t0.variant.precision} {t0.variant.data_format} | batch {t0.batch_size}]"
        )
        calls = self.opts.calls_per_round(mode)
        run_alternating(
            tasks,
            calls,
            mode.per_call,
            self.opts.warmup_rounds,
            self.opts.repeats,
            self.log,
            interleave_calls=t0.engine == "dygraph",
        )
        by_name = {t.spec.name: t for t in tasks}
        for t in tasks:  # a plain model's baseline is itself (or the first plain model of its arch)
            self.records.append(
                task_record(
                    t,
                    by_name.get(t.spec.plain or ""),
                    self.opts.image_size,
                    self.opts,
                    self.device,
                    self.threads,
                    calls,
                )
            )
            t.run = None  # drop the model before the next group
        self.save()

    def dygraph(self, variant: Variant) -> None:
        """Every mode in registry order, each group of models built fresh and freed after."""
        o = self.opts
        for mode in map(get_mode, mode_names()):
            specs = [s for s in self.specs if self.wanted(s, mode.name, "dygraph", variant)]
            if not specs:
                continue
            b = o.batch_size(mode)
            images, labels = synthetic_batch(b, o.image_size, specs[0].cfg["model"]["num_classes"], o.seed)
            tasks = []
            for s in specs:
                model = build(s, variant, o.seed)
                if s.name not in self.profiles and variant == FP32:
                    self.profiles[s.name] = profile(s, o.image_size, model)
                tasks.append(Task(s, mode.name, "dygraph", variant, b, mode.runner(model, s, variant, images, labels)))
            self.timed(tasks, mode)
            del tasks
            _free()

    def export_models(self) -> list[ModelSpec]:
        """Export every model the exported engines need: the fp32 NCHW static graph, ONNX for ONNX Runtime and
        OpenVINO, and the int8 ONNX model (calibrated on opts.calibration_images synthetic images) for int8."""
        from senet.export import export

        engines = [e for e in self.opts.engines if e in EXPORTED]
        needs = {"onnxruntime": ("onnxruntime", "paddle2onnx"), "openvino": ("openvino", "paddle2onnx")}
        for engine, modules in needs.items():
            if engine in engines and not have(*modules):
                self.notice(f"{' or '.join(modules)} is not installed: the {engine} engine is skipped")
                engines.remove(engine)
        self.opts.engines = [e for e in self.opts.engines if e == "dygraph" or e in engines]
        specs = [s for s in self.specs if any(self.wanted(s, m, e, FP32) for m in mode_names() for e in engines)]
        onnx = {"onnxruntime", "openvino"} & set(engines)
        int8 = any(v.inference == "int8" for e in engines for v in exported_variants(self.opts, e, []))
        formats = ["paddle"] + (["onnx"] if onnx else []) + (["int8"] if int8 else [])
        done = []
        for s in specs:
            folder = os.path.join(self.dir, "export", _slug(s.name))
            # The graph takes image_size; a 1-image synthetic val split names the classes. Only the keys
            # that matter are taken from the config, so the data source has nothing to ignore.
            cfg = copy.deepcopy(s.cfg)
            cfg["data"] = dict(
                DEFAULTS["data"],
                name="synthetic",
                synthetic_val_size=1,
                eval_crop=self.opts.image_size,
                image_size=self.opts.image_size,
                synthetic_train_size=self.opts.calibration_images,
                mean=cfg["data"]["mean"],
                std=cfg["data"]["std"],
            )
            self.log(f"exporting {s.name} ({', '.join(formats)})")
            try:
                model = build(s, FP32, self.opts.seed)
                model.eval()
                export(cfg, folder, formats, model=model, calibration_images=self.opts.calibration_images)
            except Exception as e:  # noqa: BLE001 - one model that cannot be exported must not end the run
                self.notice(f"{s.name} could not be exported ({str(e).splitlines()[0]}): exported engines skip it")
                continue
            self.exports[s.name] = folder
            done.append(s)
        return done

    def exported(self) -> None:
        """The exported modes through Paddle Inference, ONNX Runtime and OpenVINO, in each precision each runs here."""
        modes = [get_mode(m) for m in mode_names() if get_mode(m).exported and m in self.opts.modes]
        if not modes or not any(e in EXPORTED for e in self.opts.engines):
            return
        specs = self.export_models()
        for engine in [e for e in self.opts.engines if e in EXPORTED]:
            for variant in exported_variants(self.opts, engine, self.notices):
                self.exported_engine(engine, variant, modes, specs)

    def exported_engine(self, engine: str, variant: Variant, modes: list[Mode], specs: list[ModelSpec]) -> None:
        """Every exported mode of one engine in one precision. A predictor is loaded once per model for all
        modes that share its settings (a Paddle Inference predictor takes ~3 s to build); OpenVINO's differ
        by the mode's hint (latency at batch 1, throughput at the larger batch)."""
        hints = {m.name: m.hint if engine == "openvino" else "latency" for m in modes}
        for hint in dict.fromkeys(hints.values()):
            hint_modes = [m for m in modes if hints[m.name] == hint]
            predictors = self.load_predictors(
                engine,
                variant,
                hint,
                [s for s in specs if any(self.wanted(s, m.name, engine, variant) for m in hint_modes)],
            )
            for mode in hint_modes:
                b = self.opts.batch_size(mode)
                images, _ = synthetic_batch(b, self.opts.image_size, 2, self.opts.seed)
                tasks = []
                for s in [s for s in specs if s.name in predictors and self.wanted(s, mode.name, engine, variant)]:
                    p = predictors[s.name]
                    try:  # one call first: e.g. a TensorRT profile may not take this batch size
                        p.predict(images)
                    except Exception as e:  # noqa: BLE001 - skip this mode for this model, keep the run going
                        self.notice(
                            f"{engine} could not run {s.name} at batch {b} ({str(e).splitlines()[0]}): "
                            f"{mode.name} skipped"
                        )
                        continue
                    tasks.append(Task(s, mode.name, engine, variant, b, lambda p=p, x=images: p.predict(x)))
                self.timed(tasks, mode)
                del tasks
            p = predictors = None  # the loop's last predictor too: all of these go before the next group
            _free()

    def load_predictors(self, engine: str, variant: Variant, hint: str, specs: list[ModelSpec]) -> dict[str, Any]:
        """{model name: predictor} on `engine` in the variant's precision; a model that cannot be loaded gets a
        notice and is left out."""
        predictors = {}
        for s in specs:
            try:
                predictors[s.name] = Predictor(
                    self.exports[s.name],
                    EXPORTED[engine],
                    threads=self.threads,
                    precision=variant.inference,
                    device=self.device,
                    hint=hint,
                    emulate_bf16=self.opts.emulate_bf16,
                )
            except Exception as e:  # noqa: BLE001 - skip this engine for this model, keep the run going
                self.notice(f"{engine} {variant.inference} could not load {s.name} ({str(e).splitlines()[0]}): skipped")
        return predictors

    def save(self) -> None:
        """results.json (rewritten after every group, so a stopped run keeps what it measured)."""
        for r in self.records:
            r.update(self.profiles.get(r["name"], {}))
        data = {
            "environment": self.env,
            "options": asdict(self.opts),
            "notices": self.notices,
            "summary": summary(self.records),
            "limit": self.limit,
            "data_loader": self.loader,
            "results": self.records,
        }
        write_text(os.path.join(self.dir, "results.json"), json.dumps(data, indent=2, default=str))


def run_bench(opts: BenchOptions, log: Callable[[str], None] | None = None) -> str:
    """Run the benchmark; write results.json, results.csv, report.md and the plots; return the run folder."""
    start = time.perf_counter()
    out = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def log(message: str) -> None:
        out(f"[{time.perf_counter() - start:6.1f} s] {message}")

    run = Run(copy.deepcopy(opts), log)
    log(f"bench: {len(run.specs)} models, writing {run.dir}")
    for message in run.notices:
        log(f"notice: {message}")
    log("memory bandwidth (the limit line)")
    run.limit = measure_bandwidth(run.threads)
    if opts.loader_images > 0:
        log("data loader: plain decoding, our loader, DALI")
        batch = min(opts.loader_batch, opts.loader_images)  # a batch of at most the images timed
        run.loader = bench_loader(run.specs[0].cfg, opts.loader_images, batch, opts.image_size, run.dir)
    for variant in run.variants:
        run.dygraph(variant)
    run.exported()
    for s in run.specs:  # models measured only on exported engines were not profiled yet
        if s.name not in run.profiles and any(r["name"] == s.name for r in run.records):
            run.profiles[s.name] = profile(s, opts.image_size)
    if opts.memory:
        probes = plan_probes(run.records, run.specs, run.variants, run.opts, run.threads, run.exports, run.device)
        for message in probe_memory(probes, probe_parallelism(run.gpu, len(probes)), log):
            run.notice(message)
    run.env["load_average_end"] = loadavg()
    run.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    run.save()
    write_outputs(run.dir, run.env, run.records, run.notices, run.loader, run.limit)
    if not opts.keep_export:
        shutil.rmtree(os.path.join(run.dir, "export"), ignore_errors=True)
    return run.dir


# ImageNet-like files: ImageNet's most common size, JPEG quality 90 (senet.data.fake.write_image), and
# smooth structure with fine grain (senet.data.fake.fake_image): noise would decode several times slower.
LOADER_FILE_SIZE = (500, 375)  # width, height, pixels


def bench_loader(cfg: dict, images: int, batch_size: int, image_size: int, work_dir: str, repeats: int = 3) -> dict:
    """Plain decode+crop, our training loader and DALI (where installed) on generated ImageNet-like JPEGs
    (senet.data.check.bench), cropped to image_size."""
    from senet.data.check import WARMUP_BATCHES, bench

    classes = 4
    files = (WARMUP_BATCHES + math.ceil(images / batch_size) + 1) * batch_size  # warm-up + timed + spare
    folder = os.path.join(work_dir, "loader_data")
    make_fake_imagenet(
        folder,
        classes=classes,
        train_per_class=math.ceil(files / classes),
        val_per_class=1,
        size=LOADER_FILE_SIZE,
        jpeg_only=True,
    )
    cfg = copy.deepcopy(cfg)
    workers = max(1, min(cfg["data"]["num_workers"], cpu_count()))  # more workers than cores only adds contention
    cfg["data"].update(
        name="imagenet",
        root=folder,
        train_list=None,
        val_list=None,
        batch_size=batch_size,
        num_workers=workers,
        image_size=image_size,
        color_jitter=0.0,
    )
    cfg["model"]["num_classes"] = classes
    cfg["output_dir"] = folder  # the index cache goes here
    try:
        out = bench(cfg, images, repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out.update(
        image_size=image_size,
        files="generated ImageNet-like JPEGs (quality 90)",
        file_size="x".join(map(str, LOADER_FILE_SIZE)),
    )
    return out


def _free() -> None:
    gc.collect()
    if on_gpu():
        import paddle

        paddle.device.cuda.empty_cache()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
