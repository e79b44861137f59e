"""`make bench`: the cost of SE, ECA and CBAM, measured side by side with the plain ResNet in one run.

Hu et al., "Squeeze-and-Excitation Networks", Section 4 ("Model and computational complexity")
claims SE costs +0.26% multiply-adds, 190 -> 209 ms per 256-image training minibatch on GPUs
(x1.10) and 164 -> 167 ms per image for CPU inference (x1.02). This package measures the same
things for this implementation's SE, ECA and CBAM blocks, on the machine it runs on:

- training-step throughput (senet.step.train_step, the trainer's own step), inference throughput,
  batch-1 latency, peak memory, parameters and GMACs (senet.profile);
- on the engines dygraph, Paddle Inference (oneDNN on a CPU; plain CUDA on a GPU, since TensorRT
  takes only .pdmodel graphs and our exports are PIR), ONNX Runtime and OpenVINO (when installed),
  through senet.export / senet.inference, each in the precisions it runs here (fp32; bf16 on CPUs
  with bf16 instructions; int8 from the int8 export), against a limit line: the time to read the
  weights once at the machine's measured memory bandwidth;
- the training data loader against plain decoding and NVIDIA DALI (senet.data.check.bench).

Its parts, one module each:

- timing.py       the one alternation routine (also used by scripts/bench_se_block.py and bench_export.py)
- plan.py         the models of a run (configs, the SE r sweep, the paddle.vision references), Variant
- modes.py        the mode registry (latency, infer, train): batch, calls per round, runner, probe, summary line
- options.py      BenchOptions, the engines, precisions and the two presets (default CPU run, --full), variants
- bandwidth.py    the memory bandwidth and the time to read the weights once (the limit line)
- memory.py       peak-memory probes, one child process per model, engine and variant
- report.py       summary, report.md, results.csv, the plots, the terminal lines
- environment.py  versions, device, CPU instruction sets, load, git commit
- run.py          the run that ties them together, results.json, the data-loader benchmark

Each module imports only those above it in this list (run.py hands data, not itself, to the others).

Method (timing.py): every model gets an untimed warm-up round, then the models take turns for
`repeats` rounds, in reverse order every other round. We report the median and the min-max over the
samples, and each model's time ratio against the plain model of the same run, engine and mode, as
the median of the per-round ratios (pairing rounds cancels slow drift).

Paddle is imported inside the functions that need it: callers must run senet.runtime.setup_cpu
first, and the ONNX Runtime memory probe must not carry Paddle's own resident memory.
"""

from senet.bench.bandwidth import measure_bandwidth, weights_read_ms
from senet.bench.memory import PROBE_MARK, Probe, measure_peaks, plan_probes, probe_main, probe_memory, run_probe
from senet.bench.modes import Mode, get_mode, infer_runner, mode_names, register_mode, train_runner, unregister_mode
from senet.bench.options import (
    DEFAULT_CONFIGS,
    ENGINES,
    EXPORTED,
    PRECISIONS,
    REDUCTIONS,
    BenchOptions,
    default_options,
    exported_variants,
    resolve_variants,
)
from senet.bench.plan import FP32, ModelSpec, Variant, attention_of, build, plan_models, profile
from senet.bench.report import FIELDS, format_summary, report_markdown, results_csv, summary, write_outputs
from senet.bench.run import Run, Task, run_bench, task_record
from senet.bench.timing import Timed, alternate, on_gpu, run_alternating, sync, time_round

__all__ = [
    "BenchOptions",
    "DEFAULT_CONFIGS",
    "ENGINES",
    "EXPORTED",
    "FIELDS",
    "FP32",
    "Mode",
    "ModelSpec",
    "PRECISIONS",
    "PROBE_MARK",
    "Probe",
    "REDUCTIONS",
    "Run",
    "Task",
    "Timed",
    "Variant",
    "alternate",
    "attention_of",
    "build",
    "default_options",
    "exported_variants",
    "format_summary",
    "get_mode",
    "infer_runner",
    "measure_bandwidth",
    "measure_peaks",
    "mode_names",
    "on_gpu",
    "plan_models",
    "plan_probes",
    "probe_main",
    "probe_memory",
    "profile",
    "register_mode",
    "report_markdown",
    "resolve_variants",
    "results_csv",
    "run_alternating",
    "run_bench",
    "run_probe",
    "summary",
    "sync",
    "task_record",
    "time_round",
    "train_runner",
    "unregister_mode",
    "weights_read_ms",
    "write_outputs",
]
