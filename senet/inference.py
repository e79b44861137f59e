"""Run an exported model (senet.export): Paddle Inference, ONNX Runtime or OpenVINO; fp32, bf16 or int8;
image files; val-split evaluation.

    p = Predictor("output/se_resnet50/export", engine="openvino", precision="auto")
    images, paths, failed = p.preprocess(["cat.jpg", "dog.png"])
    logits = p.predict(images)          # uint8 NHWC RGB in, float32 [N, num_classes] out

Engines:
- "paddle": Paddle Inference. On a CPU with oneDNN (fp32, or bf16 on CPUs with bf16 instructions);
  on a GPU when asked and present, with CUDA kernels. TensorRT: Paddle 3.3's
  `enable_tensorrt_engine` applies to `.pdmodel` graphs only, and our exports are PIR graphs
  (`model.json`), so they run on plain CUDA kernels, and a one-line notice says so where TensorRT is
  installed (docs/gpu.md: converting with paddle.tensorrt). A `.pdmodel` graph gets fp32 TensorRT
  engines for batches of 1 to TRT_MAX_BATCH; larger batches are run in parts of that size.
- "onnxruntime": ONNX Runtime on the CPU (fp32, or the int8 model), or its CUDA provider when asked and present.
- "openvino": OpenVINO on the CPU, from the exported ONNX (fp32, bf16, or the int8 model), with the
  thread count and a latency or throughput hint (`hint`).
`device`: "cpu", "gpu" (this process's GPU: the rank's own under paddle.distributed.launch, else GPU
0) or "gpu:N". A requested GPU that is not there gives a one-line notice and the CPU. `Predictor.backend`
names what really runs, for labels ("Paddle Inference, CUDA, GPU 1"; "OpenVINO, CPU, int8, latency hint").

Precision (`precision`, PRECISIONS or "auto"; `Predictor.precision` is what runs): int8 is a model of
its own, exported by tools/export.py (--format int8: static quantisation calibrated on training
images, senet.export.quantize_int8); bf16 is the engine's own conversion of the fp32 model at load
time. On a CPU without bf16 instructions (senet.isa), bf16 gives a one-line notice naming the missing
instruction set and runs fp32: oneDNN would emulate it, slower than fp32 (docs/export.md). "auto"
takes the fastest precision that this CPU runs natively, that the engine runs and that the export
holds (int8, then bf16, then fp32), and says which.

Preprocessing is the eval pipeline's own code (senet.data): decode to RGB, resize the shorter side,
centre crop, then (pixel / 255 - mean) / std as one float32 multiply-add, so an exported model sees
exactly the inputs the dygraph evaluation sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from senet import isa
from senet.config import ConfigError, safe_yaml
from senet.data.decode import BAD_IMAGE_HINT, IMAGE_EXTENSIONS, decode_image
from senet.data.errors import BadImageError
from senet.data.transforms import resize_center_crop
from senet.limits import regular_file_problem, sha256_file
from senet.runtime import cpu_count, env_threads, restore_threads

ENGINES = ("paddle", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# What each engine runs on a CPU. int8 is the exported QDQ ONNX model (senet.export.quantize_int8), which
# Paddle Inference cannot read; ONNX Runtime's CPU provider has no bf16 convolutions.
ENGINE_PRECISIONS = {"paddle": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
HINTS = ("latency", "throughput")  # OpenVINO's performance hint; the other engines have no such setting
INFO_FILE = "inference.yml"
TRT_MAX_BATCH = 64  # images: the largest batch of the TensorRT dynamic-shape profile (1 to 64, optimum 8)


class ModelDirError(ValueError):
    """A folder that is not (or not completely) an exported model; the message says what to do."""


class EngineError(ValueError):
    """An engine that loaded a model but fails to run it; the message names the engine, precision and fix."""


def notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr: C++ code that prints on stdout (paddle2onnx's progress; Paddle
    Inference's oneDNN passes, e.g. "ReduceMeanCheckIfOneDNNSupport" once per CBAM block) must not reach
    the stdout of tools that print JSON there (tools/infer.py --json, tools/eval.py --json)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# Bounds of inference.yml's numbers. A crop beyond MAX_CROP (8.8 GB for a crop of 3000 at batch 16)
# is no model this project exports; resize at most 2x the crop (ImageNet: 256 / 224 = 1.14).
MAX_CROP = 1024
MAX_RESIZE_RATIO = 2
MAX_CLASSES = 1_000_000
MAX_MODEL_JSON_BYTES = 256 << 20  # an SE-ResNet-152 graph is ~1 MB of JSON


def _bad(path: str, key: str, problem: str) -> ModelDirError:
    return ModelDirError(f"{path}: {key} {problem}; re-export the model with tools/export.py (or fix the file)")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _int_in(x: Any, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _plain_name(x: Any) -> bool:
    """A file name inside the model folder: no folder part, so inference.yml cannot point elsewhere."""
    return isinstance(x, str) and x not in ("", ".", "..") and os.path.basename(x) == x


def validate_info(info: Any, path: str) -> dict:
    """inference.yml's fields, with their types and ranges; the first problem is a ModelDirError naming the key."""
    if not isinstance(info, dict):
        raise ModelDirError(
            f"{path} must hold a mapping (arch, num_classes, preprocess, ...), not "
            f"{type(info).__name__}; re-export the model with tools/export.py"
        )
    missing = [k for k in ("num_classes", "preprocess", "input", "class_names", "files") if k not in info]
    if missing:
        raise ModelDirError(f"{path} lacks {', '.join(missing)}; re-export the model with tools/export.py")
    if not _int_in(info["num_classes"], 1, MAX_CLASSES):
        raise _bad(path, "num_classes", f"must be an integer in 1..{MAX_CLASSES:,}, not {info['num_classes']!r}")
    pre = info["preprocess"]
    if not isinstance(pre, dict):
        raise _bad(path, "preprocess", "must be a mapping (resize, crop, mean, std)")
    for key in ("resize", "crop", "mean", "std"):
        if key not in pre:
            raise _bad(path, f"preprocess.{key}", "is missing")
    if not _int_in(pre["crop"], 1, MAX_CROP):
        raise _bad(path, "preprocess.crop", f"must be an integer in 1..{MAX_CROP}, not {pre['crop']!r}")
    if not _int_in(pre["resize"], pre["crop"], MAX_RESIZE_RATIO * pre["crop"]):
        raise _bad(
            path,
            "preprocess.resize",
            f"must be an integer from crop ({pre['crop']}) to {MAX_RESIZE_RATIO}x crop, not {pre['resize']!r}",
        )
    if pre.get("color", "RGB") != "RGB":
        raise _bad(path, "preprocess.color", f"must be RGB (the only order senet exports), not {pre['color']!r}")
    for key, lo in (("mean", -1e3), ("std", 1e-6)):
        v = pre[key]
        if not (isinstance(v, list) and len(v) == 3 and all(_number(x) and lo <= x <= 1e3 for x in v)):
            raise _bad(
                path,
                f"preprocess.{key}",
                f"must be 3 numbers in {lo:g}..1000 (one per RGB channel; std divides), not {v!r}",
            )
    inp = info["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
        raise _bad(path, "input", "must be a mapping with the input tensor's name")
    shape = inp.get("shape", [-1, 3, pre["crop"], pre["crop"]])
    if not (isinstance(shape, list) and len(shape) == 4 and all(_int_in(d, -1, MAX_CROP) for d in shape)):
        raise _bad(path, "input.shape", f"must be a list of 4 integers [batch, 3, crop, crop], not {shape!r}")
    if shape[1:] != [3, pre["crop"], pre["crop"]]:
        raise _bad(path, "input.shape", f"{shape!r} does not match preprocess.crop {pre['crop']}")
    names = info["class_names"]
    if not (
        isinstance(names, list)
        and len(names) == info["num_classes"]
        and all(isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names)
    ):
        raise _bad(path, "class_names", f"must be a list of {info['num_classes']} names (num_classes)")
    classes = info.get("classes")  # the class ids the weights were trained on (exports since issue 23)
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise _bad(path, "classes", "must be a list of class names (the data's class folders, in label order)")
    files = info["files"]
    if not isinstance(files, dict) or not files:
        raise _bad(path, "files", "must map formats (paddle, onnx, int8, safetensors) to their files")
    for fmt, keys in (("paddle", ("model", "params")), ("onnx", ("model",)), ("int8", ("model",))):
        if fmt in files:
            entry = files[fmt]
            if not isinstance(entry, dict) or not all(_plain_name(entry.get(k)) for k in keys):
                raise _bad(path, f"files.{fmt}", f"must give {' and '.join(keys)} as file names inside the folder")
    if "safetensors" in files and not _plain_name(files["safetensors"]):
        raise _bad(path, "files.safetensors", "must be a file name inside the folder")
    digests = info.get("sha256")
    if digests is not None and not (
        isinstance(digests, dict)
        and all(_plain_name(k) and isinstance(v, str) and len(v) == 64 for k, v in digests.items())
    ):
        raise _bad(path, "sha256", "must map file names to 64-digit SHA-256 digests")
    return info


def read_info(model_dir: str) -> dict:
    """inference.yml of an exported model, checked for the fields the Predictor needs, their types and ranges."""
    path = os.path.join(model_dir, INFO_FILE)
    problem = regular_file_problem(path)
    if problem is not None and problem.missing:
        raise ModelDirError(f"{path} not found: is {model_dir} a folder written by tools/export.py?")
    if problem:
        raise ModelDirError(f"{path} {problem}: give a folder written by tools/export.py")
    try:
        with open(path, encoding="utf-8") as f:
            info = safe_yaml(f, path)
    except (ConfigError, UnicodeDecodeError) as e:
        raise ModelDirError(
            f"{path} is not a valid inference.yml ({str(e).splitlines()[0]}); re-export the model with tools/export.py"
        ) from None
    return validate_info(info, path)


# Loads a Paddle Inference model in a child process: a file that crashes the engine (a garbage
# .pdmodel segfaults Paddle 3.3.1) then costs the child, and the parent reports the file by name.
_PROBE = """import sys
from paddle import inference
config = inference.Config(sys.argv[1], sys.argv[2])
config.disable_glog_info()
config.disable_gpu()
inference.create_predictor(config)
"""


def probe_paddle_model(model: str, params: str) -> None:
    """Load a Paddle Inference model once in a subprocess; a crash or error there is a ModelDirError naming it."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, model, params], capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return
    code = proc.returncode
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"signal {signum}"
        raise ModelDirError(
            f"{model} crashed Paddle Inference while loading ({name}): it is not a valid Paddle "
            f"model (or {os.path.basename(params)} does not belong to it); re-export the model"
        )
    last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no message"]
    raise ModelDirError(
        f"{model} (with {os.path.basename(params)}) could not be loaded by Paddle Inference "
        f"({last[0].strip()[:300]}); re-export the model with tools/export.py"
    )


def check_model_json(path: str) -> list | None:
    """A PIR graph (model.json) must be a JSON object with the PIR magic before Paddle Inference sees it.

    Returns the shape of its first `data` (input) op, e.g. [-1, 3, 224, 224], or None if not found.
    """
    size = os.path.getsize(path)
    if size > MAX_MODEL_JSON_BYTES:
        raise ModelDirError(
            f"{path} is {size:,} bytes, more than the {MAX_MODEL_JSON_BYTES:,} of any graph we "
            f"export; re-export the model"
        )
    try:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
        magic = graph.get("base_code", {}).get("magic") if isinstance(graph, dict) else None
    except (ValueError, RecursionError, AttributeError) as e:
        raise ModelDirError(
            f"{path} is not a Paddle model graph (unreadable JSON: {type(e).__name__}: "
            f"{str(e)[:200]}); re-export the model with tools/export.py"
        ) from None
    if magic != "pir" or not isinstance(graph.get("program"), dict):
        raise ModelDirError(
            f"{path} is JSON but not a Paddle (PIR) model graph; re-export the model with tools/export.py"
        )
    try:
        ops = graph["program"]["regions"][0]["blocks"][0]["ops"]
        data = next(op for op in ops if isinstance(op, dict) and op.get("#") == "1.data")
        return next(a["AT"]["D"] for a in data["A"] if a.get("N") == "shape")
    except (KeyError, IndexError, TypeError, StopIteration, AttributeError):
        return None


def resolve_precision(
    requested: str, engine: str, files: dict, found: dict[str, bool] | None = None, emulate_bf16: bool = False
) -> tuple[str, str | None]:
    """(the precision to run, a one-line notice or None) for `requested` (PRECISIONS or "auto") on `engine`.

    `files` is inference.yml's files (int8 needs its model there); `found` the CPU's features
    (senet.isa.features(); None reads this CPU's). A precision the engine cannot run, or an int8
    model the export lacks, is a ValueError naming the fix. bf16 on a CPU without bf16 instructions
    runs fp32 with a notice naming them, unless `emulate_bf16` (tests, measurements) asks for
    oneDNN's / OpenVINO's emulation, which is slower than fp32.
    """
    found = isa.features() if found is None else found
    runs = ENGINE_PRECISIONS[engine]
    if requested == "auto":
        for p in ("int8", "bf16"):  # fastest first (docs/export.md, "bf16 and int8")
            if p in runs and isa.missing_for(p, found) is None and (p != "int8" or "int8" in files):
                return p, f"precision auto: {p} ({engine} runs it and this CPU has {' or '.join(isa.NATIVE[p])})"
        why = [
            f"{p}: {engine} does not run it"
            if p not in runs
            else f"{p}: no {isa.missing_for(p, found)}"
            if isa.missing_for(p, found)
            else f"{p}: the export has no int8 model"
            for p in ("int8", "bf16")
        ]
        return "fp32", f"precision auto: fp32 ({'; '.join(why)})"
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; known: {', '.join(PRECISIONS)}, auto")
    if requested not in runs:
        others = [e for e in ENGINES if requested in ENGINE_PRECISIONS[e]]
        raise ValueError(
            f"the {engine} engine runs {' and '.join(runs)}, not {requested}; use the engine "
            f"{' or '.join(others)} for {requested}"
        )
    if requested == "int8" and "int8" not in files:
        raise ModelDirError(
            "this export has no int8 model; export one with tools/export.py --format int8 "
            "(calibrated on training images)"
        )
    missing = isa.missing_for(requested, found)
    if requested == "bf16" and missing:
        if emulate_bf16:
            return "bf16", f"bf16 emulated: this CPU has no {missing}, so {engine} converts every operand in software"
        return "fp32", f"this CPU has no {missing} instructions for bf16; running fp32 (emulated bf16 is slower)"
    if requested == "int8" and missing:
        return "int8", (
            f"this CPU has no {missing}: int8 runs without its dot-product instruction, slower than on CPUs with it"
        )
    return requested, None


class Predictor:
    """An exported model on one engine. `predict` takes uint8 NHWC RGB images already resized and cropped."""

    def __init__(
        self,
        model_dir: str,
        engine: str = "paddle",
        threads: int = 0,
        precision: str = "fp32",
        device: str = "cpu",
        hint: str = "latency",
        *,
        bf16: bool = False,
        emulate_bf16: bool = False,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
        if hint not in HINTS:
            raise ValueError(f"unknown hint {hint!r}; known: {', '.join(HINTS)}")
        kind, gpu_index = parse_device(device)
        precision = "bf16" if bf16 else precision  # bf16=True: the keyword of earlier versions
        self.model_dir, self.engine, self.hint = model_dir, engine, hint
        self.backend = ""  # what runs, set by the engine's loader below
        self.max_batch: int | None = None  # images per engine call; predict() splits larger batches
        self._unverified_noted = False
        self.info = read_info(model_dir)
        pre = self.info["preprocess"]
        self.resize, self.crop = int(pre["resize"]), int(pre["crop"])
        self.class_names: list[str] = [str(c) for c in self.info["class_names"]]
        self.num_classes = int(self.info["num_classes"])
        # (x / 255 - mean) / std as x * scale + shift, in float32: the same arithmetic as
        # senet.data.normalize_batch, so exported and dygraph evaluation see identical inputs.
        self._scale = np.array([1 / (255 * s) for s in pre["std"]], dtype=np.float32)
        self._shift = np.array([-m / s for m, s in zip(pre["mean"], pre["std"])], dtype=np.float32)
        self.threads = threads if threads > 0 else env_threads() or cpu_count()
        files = self.info["files"]
        self.requested_precision = precision
        self.precision, message = resolve_precision(precision, engine, files, emulate_bf16=emulate_bf16)
        if message:
            notice(message)
        fmt = "int8" if self.precision == "int8" else "paddle" if engine == "paddle" else "onnx"
        if fmt not in files:
            raise ModelDirError(f"{model_dir} has no {fmt} model; export one with tools/export.py --format {fmt}")
        gpu = _usable_gpu(kind, gpu_index) if engine != "openvino" else None  # None: the CPU
        if kind == "gpu" and engine == "openvino":
            notice("the openvino engine runs on the CPU here; use paddle or onnxruntime for a GPU")
        if engine == "paddle":
            self._run = self._paddle(files["paddle"], self.precision == "bf16", gpu)
        elif engine == "onnxruntime":
            self._run = self._onnxruntime(files[fmt]["model"], gpu)
        else:
            self._run = self._openvino(files[fmt]["model"])
        self.backend += f", {self.precision}" if self.precision != "fp32" and "bf16" not in self.backend else ""

    def _file(self, name: str) -> str:
        """The path of a file inference.yml lists: a regular file whose SHA-256 matches, where recorded."""
        path = os.path.join(self.model_dir, name)
        problem = regular_file_problem(path)
        if problem is not None and problem.missing:
            raise ModelDirError(f"{path} is missing (inference.yml lists it); re-export the model with tools/export.py")
        if problem:
            raise ModelDirError(f"{path} {problem}; re-export the model with tools/export.py")
        digests = self.info.get("sha256")
        if digests is None:
            if not self._unverified_noted:
                notice(
                    f"{os.path.join(self.model_dir, INFO_FILE)} has no sha256 digests (exported before they "
                    f"were recorded): model files are loaded unverified; re-export to add them"
                )
                self._unverified_noted = True
        elif name not in digests:
            raise ModelDirError(
                f"{path} has no sha256 digest in inference.yml; re-export the model with tools/export.py"
            )
        elif sha256_file(path) != digests[name]:
            raise ModelDirError(
                f"{path} fails its SHA-256 check (inference.yml sha256): the file was changed or "
                f"damaged after export; export or copy the model again"
            )
        return path

    def _paddle(self, files: dict, bf16: bool, gpu: int | None) -> Any:
        from paddle import inference  # Paddle's ccache warning at import: dropped by senet.runtime.quiet_paddle

        model_file, params_file = self._file(files["model"]), self._file(files["params"])
        if model_file.endswith(".json"):
            shape = check_model_json(model_file)
            if shape is not None:
                self._check_input_shape(model_file, shape)
        if not model_file.endswith(".json") or "sha256" not in self.info:
            # Not a graph we wrote (a .pdmodel program, or no digest proves it is ours): load it once
            # in a child process first, so a file that crashes the engine is an error, not a segfault.
            probe_paddle_model(model_file, params_file)
        config = inference.Config(model_file, params_file)
        config.disable_glog_info()
        config.switch_ir_optim(True)  # conv+BN folding, conv+bias+activation fusion
        # Not enable_memory_optim(): with the PIR graphs of Paddle 3.3.1 it fails ("Not find
        # predictor_id 0 and pass_name memory_optimize_pass").
        if gpu is not None:
            config.enable_use_gpu(256, gpu)  # initial memory pool, MB; the chosen device
            self.backend = f"Paddle Inference, CUDA, GPU {gpu}"
            if bf16:
                notice("bf16 is for oneDNN on the CPU; the GPU runs fp32")
                self.precision = "fp32"
            trt = inference.get_trt_compile_version() > (0, 0, 0) and inference.get_trt_runtime_version() > (0, 0, 0)
            if trt and model_file.endswith(".json"):
                notice(
                    f"no TensorRT for {os.path.basename(model_file)}: Paddle 3.3 applies enable_tensorrt_engine "
                    f"to .pdmodel graphs only and this is a PIR graph, so it runs on plain CUDA kernels "
                    f"(docs/gpu.md: converting it with paddle.tensorrt)"
                )
            elif trt:
                self._tensorrt(config, inference)
                self.backend = f"Paddle Inference, TensorRT fp32, GPU {gpu}"
            elif not model_file.endswith(".json"):
                notice("Paddle was built without TensorRT (or TensorRT is not installed); plain CUDA kernels")
        else:
            self.backend = "Paddle Inference, oneDNN" + (" bf16" if bf16 else "")
            config.disable_gpu()
            config.enable_onednn()
            if not files.get("onednn_placement", True):  # see senet.export.save_static
                config.delete_pass("onednn_placement_pass")
            config.set_cpu_math_library_num_threads(self.threads)
            if bf16:  # only where senet.isa found bf16 instructions, or emulation was asked for (resolve_precision)
                config.enable_onednn_bfloat16()
        with stdout_to_stderr():  # its analysis passes print on stdout
            predictor = inference.create_predictor(config)
        x = predictor.get_input_handle(predictor.get_input_names()[0])
        y = predictor.get_output_handle(predictor.get_output_names()[0])
        first = [True]  # oneDNN picks its kernels at the first run, and says on stdout where it falls back

        def run(batch: np.ndarray) -> np.ndarray:
            x.reshape(batch.shape)
            x.copy_from_cpu(batch)
            try:
                with stdout_to_stderr() if first[0] else contextlib.nullcontext():
                    first[0] = False
                    predictor.run()
            except RuntimeError as e:
                if not bf16:
                    raise
                # Paddle 3.3.1's oneDNN bf16 fails on some graphs (the demo's plain ResNet-20, not its SE twin;
                # cause not traced) with a bare "std::exception": name what failed and what runs instead.
                raise EngineError(
                    f"Paddle Inference's oneDNN bf16 failed on {os.path.basename(model_file)} "
                    f"({str(e).strip()[:200]}); use --precision fp32, or bf16 on the openvino "
                    f"engine"
                ) from None
            finally:
                restore_threads()  # the run leaves dygraph in this process on one thread (see there)
            return y.copy_to_cpu()

        return run

    def _tensorrt(self, config: Any, inference: Any) -> None:
        """fp32 TensorRT engines for batches of 1 to TRT_MAX_BATCH images, built at the first run (not
        cached on disk), for a .pdmodel graph (Paddle 3.3 applies them to no other)."""
        shape = [3, self.crop, self.crop]
        config.enable_tensorrt_engine(
            workspace_size=1 << 30,
            max_batch_size=TRT_MAX_BATCH,
            min_subgraph_size=3,
            precision_mode=inference.PrecisionType.Float32,
            use_static=False,
            use_calib_mode=False,
        )
        name = self.info["input"]["name"]
        config.set_trt_dynamic_shape_info({name: [1] + shape}, {name: [TRT_MAX_BATCH] + shape}, {name: [8] + shape})
        self.max_batch = TRT_MAX_BATCH  # the profile takes no more: predict() runs larger batches in parts

    def _onnxruntime(self, filename: str, gpu: int | None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # one chain of ops: parallelism is inside each op
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: paddle2onnx leaves unused initializers ORT warns about
        providers: list[Any] = ["CPUExecutionProvider"]
        self.backend = "ONNX Runtime, CPU"
        if gpu is not None:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
                self.backend = f"ONNX Runtime, CUDA, GPU {gpu}"
            else:
                notice("onnxruntime has no CUDA provider here; running ONNX Runtime on the CPU")
        path = self._file(filename)
        try:
            session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types for a bad model)
            raise ModelDirError(
                f"{path} could not be loaded by ONNX Runtime ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300]}); re-export the model"
            ) from None
        name = session.get_inputs()[0].name
        self._check_input_shape(path, list(session.get_inputs()[0].shape))

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {name: batch})[0]

        return run

    def _openvino(self, filename: str) -> Any:
        """OpenVINO's CPU plugin on the ONNX file, compiled once for any batch size.

        The latency hint runs one request on all `threads`; the throughput hint lets OpenVINO split
        the threads into streams and runs a batch as that many parts at once (AsyncInferQueue), which
        pays at larger batches only. The precision hint is f32 for fp32 and for int8 (whose
        quantised convolutions run in int8 whatever the hint; the rest stays f32), bf16 for bf16.
        """
        try:
            import openvino as ov
        except ImportError:
            raise ModelDirError(
                "the openvino engine needs OpenVINO: .venv/bin/pip install openvino (requirements.txt lists it)"
            ) from None
        path = self._file(filename)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": self.hint.upper(),
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
        }
        try:
            model = core.read_model(path)
            self._check_input_shape(
                path, [d.get_length() if d.is_static else -1 for d in model.input(0).get_partial_shape()]
            )
            compiled = core.compile_model(model, "CPU", config)
        except ModelDirError:
            raise
        except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError subclasses of its own)
            raise ModelDirError(
                f"{path} could not be loaded by OpenVINO ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300]}); re-export the model"
            ) from None
        self.backend = f"OpenVINO, CPU, {self.hint} hint"
        if self.precision == "bf16":
            self.backend += ", bf16"
        output = compiled.output(0)
        if self.hint == "latency":
            request = compiled.create_infer_request()

            def run(batch: np.ndarray) -> np.ndarray:
                return request.infer({0: batch}, share_inputs=True)[output].copy()

            return run
        jobs = max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, jobs)

        def run_parts(batch: np.ndarray) -> np.ndarray:
            parts = [p for p in np.array_split(batch, min(jobs, len(batch))) if len(p)]
            out: list[np.ndarray | None] = [None] * len(parts)

            def done(request: Any, i: int) -> None:
                out[i] = request.get_output_tensor(0).data.copy()

            queue.set_callback(done)
            for i, part in enumerate(parts):
                queue.start_async({0: np.ascontiguousarray(part)}, i)
            queue.wait_all()
            return np.concatenate(out)

        return run_parts

    def _check_input_shape(self, path: str, shape: list) -> None:
        """The graph's own input size must be inference.yml's crop: a hand-edited crop cannot grow the batch."""
        want = [3, self.crop, self.crop]
        if (
            not isinstance(shape, list)
            or len(shape) != 4
            or [d if isinstance(d, int) and d > 0 else None for d in shape[1:]] not in (want, [3, None, None])
        ):
            raise ModelDirError(
                f"{path} takes input {shape} but inference.yml says [N, {', '.join(map(str, want))}] "
                f"(preprocess.crop {self.crop}); re-export the model with tools/export.py"
            )

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 [N, num_classes] of uint8 RGB images [N, crop, crop, 3] (or one [crop, crop, 3])."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"predict takes uint8 RGB images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        if images.shape[1:3] != (self.crop, self.crop):
            raise ValueError(
                f"images are {images.shape[1]}x{images.shape[2]} but the model takes "
                f"{self.crop}x{self.crop} (inference.yml crop); use preprocess()"
            )
        if len(images) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        x = images.astype(np.float32) * self._scale + self._shift
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.max_batch is None or len(x) <= self.max_batch:
            return self._run(x)
        return np.concatenate([self._run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def load_image(self, path: str) -> np.ndarray:
        """One file decoded to RGB, shorter side resized, centre-cropped: uint8 [crop, crop, 3]."""
        return resize_center_crop(decode_image(path), self.resize, self.crop)

    def preprocess(self, paths: list[str]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """(images uint8 [N, crop, crop, 3], the paths they came from, [(path, why)] for files that failed)."""
        images, ok, failed = [], [], []
        for path in paths:
            try:
                images.append(self.load_image(path))
                ok.append(path)
            except BadImageError as e:  # keep the reason; the file is named once, its hint is about training data
                why = str(e).replace(BAD_IMAGE_HINT, "").strip()
                failed.append((path, why.removeprefix(f"bad image {path}: ")))
            except (OSError, ValueError) as e:
                failed.append((path, f"{type(e).__name__}: {e}"))
        batch = np.stack(images) if images else np.zeros((0, self.crop, self.crop, 3), dtype=np.uint8)
        return batch, ok, failed


def parse_device(device: str) -> tuple[str, int | None]:
    """("cpu", None), ("gpu", None) for this process's own GPU, or ("gpu", N) for `gpu:N`; anything else
    is a ValueError naming the accepted forms."""
    kind, colon, index = str(device).partition(":")
    if kind == "cpu" and not colon:
        return "cpu", None
    if kind == "gpu" and (not colon or index.isdigit()):
        return "gpu", int(index) if colon else None
    raise ValueError(f"unknown device {device!r}; use cpu, gpu (this process's GPU) or gpu:N (GPU number N)")


def _usable_gpu(kind: str, index: int | None) -> int | None:
    """The GPU to run on for a parsed device, or None for the CPU (with a notice if a GPU was asked for
    and Paddle sees none). gpu:N beyond the GPUs Paddle sees is a ValueError naming them."""
    if kind == "cpu":
        return None
    from senet.device import has_gpu, local_gpu

    if not has_gpu():
        notice("no CUDA GPU available to Paddle; running on the CPU")
        return None
    import paddle

    count = paddle.device.cuda.device_count()
    gpu = local_gpu() if index is None else index
    if gpu >= count:
        raise ValueError(
            f"gpu:{gpu} asked for, but Paddle sees {count} GPU(s), numbered 0 to {count - 1} "
            f"(CUDA_VISIBLE_DEVICES decides which); use one of those"
        )
    return gpu


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk(predictor: Predictor, logits: np.ndarray, k: int) -> list[list[dict]]:
    """For each row, the k best classes as {"index", "label", "score"} with softmax scores."""
    probs = softmax(logits.astype(np.float64))
    k = min(k, probs.shape[1])
    out = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        out.append(
            [
                {
                    "index": int(i),
                    "label": predictor.class_names[i] if i < len(predictor.class_names) else str(i),
                    "score": float(row[i]),
                }
                for i in best
            ]
        )
    return out


def list_images(paths: list[str]) -> tuple[list[str], list[dict]]:
    """Files as given, folders as the image files directly inside them (sorted); missing paths and
    folders without images come back as failures {"file", "error"}."""
    files, failures = [], []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
            files += found
            if not found:
                failures.append({"file": path, "error": f"no {'/'.join(IMAGE_EXTENSIONS)} files in the folder"})
        elif os.path.exists(path):
            files.append(path)
        else:
            failures.append({"file": path, "error": "no such file or folder"})
    return files, failures


def predict_files(
    predictor: Predictor, paths: list[str], batch_size: int = 32, k: int = 5
) -> tuple[list[dict], list[dict]]:
    """Predict image files in batches: ([{"file", "predictions"}], [{"file", "error"}]); bad files are skipped."""
    results, failures = [], []
    for start in range(0, len(paths), batch_size):
        images, ok, failed = predictor.preprocess(paths[start : start + batch_size])
        failures += [{"file": p, "error": why} for p, why in failed]
        if ok:
            for path, preds in zip(ok, topk(predictor, predictor.predict(images), k)):
                results.append({"file": path, "predictions": preds})
    return results, failures


def accuracy_counts(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> tuple[int, int, float]:
    """(top-1 hits, top-k hits, summed cross-entropy) of one batch."""
    logits = logits.astype(np.float64)
    k = min(k, logits.shape[1])
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top1 = int((logits.argmax(axis=1) == labels).sum())
    topk_hits = int((best == labels[:, None]).any(axis=1).sum())
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].sum())
    return top1, topk_hits, loss


# Points of top-1 (percent) that a bf16 or int8 model may lose against the fp32 model before evaluation
# says so. Post-training int8 of ResNets loses well under a point on ImageNet where it works
# (calibration, per-channel weights); a loss beyond 1 point means the quantisation needs looking at.
TOP1_LOSS_BOUND = 1.0


def evaluate_exported(
    model_dir: str, cfg: dict, engine: str = "paddle", precision: str = "fp32", emulate_bf16: bool = False
) -> dict:
    """Top-1 / top-5 (percent), mean cross-entropy and image count of an exported model on the val split.

    Below fp32 (bf16, int8) the fp32 model runs beside it on the same engine and images, and the
    result adds its top-1 (`fp32_top1`) and the share of images whose top-1 class agrees with it
    (`agrees_with_fp32`, percent), with a `warning` where top-1 falls more than TOP1_LOSS_BOUND points.
    `emulate_bf16` runs bf16 on a CPU without bf16 instructions by the engine's emulation (slow; to
    measure bf16's accuracy there).
    """
    from senet.checkpoint import check_classes
    from senet.data import build_loader

    threads = cfg["train"]["threads"]
    predictor = Predictor(model_dir, engine, threads=threads, precision=precision, emulate_bf16=emulate_bf16)
    if predictor.num_classes != cfg["model"]["num_classes"]:
        raise ValueError(
            f"the exported model has {predictor.num_classes} classes but model.num_classes = "
            f"{cfg['model']['num_classes']}; evaluate it with the config it was exported from"
        )
    reference = Predictor(model_dir, engine, threads=threads) if predictor.precision != "fp32" else None
    loader = build_loader(cfg, "val")
    check_classes(
        predictor.info.get("classes"),
        [str(c) for c in loader.dataset.classes],
        os.path.join(model_dir, INFO_FILE),
        cfg["data"]["allow_class_change"],
    )
    top1 = top5 = n = agree = ref_top1 = 0
    loss = 0.0
    for images, labels in loader:
        if not labels.shape[0]:  # a batch of only bad images, skipped (data.on_bad_image=skip)
            continue
        y, x = labels.numpy(), images.numpy()
        logits = predictor.predict(x)
        a, b, s = accuracy_counts(logits, y)
        top1, top5, loss, n = top1 + a, top5 + b, loss + s, n + len(y)
        if reference is not None:
            ref = reference.predict(x)
            agree += int((ref.argmax(1) == logits.argmax(1)).sum())
            ref_top1 += int((ref.argmax(1) == y).sum())
    if n == 0:
        raise ValueError("the val split has no images")
    result = {
        "top1": 100.0 * top1 / n,
        "top5": 100.0 * top5 / n,
        "loss": loss / n,
        "images": n,
        "engine": engine,
        "precision": predictor.precision,
        "backend": predictor.backend,
    }
    if reference is None:
        return result
    result.update(fp32_top1=100.0 * ref_top1 / n, agrees_with_fp32=100.0 * agree / n)
    drop = result["fp32_top1"] - result["top1"]
    if drop > TOP1_LOSS_BOUND:
        result["warning"] = (
            f"{predictor.precision} loses {drop:.2f} points of top-1 against fp32 "
            f"({result['top1']:.2f}% against {result['fp32_top1']:.2f}%), more than the "
            f"{TOP1_LOSS_BOUND:g} allowed (senet.inference.TOP1_LOSS_BOUND)"
        )
    return result
