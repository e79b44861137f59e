"""`make bench`: the cost of SE, ECA and CBAM, measured side by side with the plain ResNet in one run.

Hu et al., "Squeeze-and-Excitation Networks", Section 4 ("Model and computational complexity")
claims SE costs +0.26% multiply-adds, 190 -> 209 ms per 256-image training minibatch on GPUs
(x1.10) and 164 -> 167 ms per image for CPU inference (x1.02). This package measures the same
things for this implementation's SE, ECA and CBAM blocks, on the machine it runs on:

- training-step throughput (senet.step.train_step, the trainer's own step), inference throughput,
  batch-1 latency, peak memory, parameters and GMACs (senet.profile);
- on the engines dygraph, Paddle Inference (oneDNN on a CPU; plain CUDA on a GPU, since TensorRT
  takes only .pdmodel graphs and our exports are PIR) and ONNX Runtime (when installed), through
  senet.export / senet.inference;
- the training data loader against plain decoding and NVIDIA DALI (senet.data.check.bench).

Its parts, one module each:

- options.py      BenchOptions, the engines and the two presets (default CPU run, --full)
- plan.py         the models of a run (configs, the SE r sweep, the paddle.vision references) and variants
- modes.py        the mode registry (latency, infer, train): batch, calls per round, runner, probe, summary line
- timing.py       the one alternation routine (also used by scripts/bench_se_block.py and bench_export.py)
- memory.py       peak-memory probes, one child process per model, engine and variant
- report.py       summary, report.md, results.csv, the plots, the terminal lines
- environment.py  versions, device, load, git commit
- run.py          the run that ties them together, results.json, the data-loader benchmark

Method (timing.py): every model gets an untimed warm-up round, then the models take turns for
`repeats` rounds, in reverse order every other round. We report the median and the min-max over the
samples, and each model's time ratio against the plain model of the same run, engine and mode, as
the median of the per-round ratios (pairing rounds cancels slow drift).

Paddle is imported inside the functions that need it: callers must run senet.runtime.setup_cpu
first, and the ONNX Runtime memory probe must not carry Paddle's own resident memory.
"""

from senet.bench.memory import PROBE_MARK, measure_peaks, probe_main, probe_memory, run_probe
from senet.bench.modes import Mode, get_mode, infer_runner, mode_names, register_mode, train_runner, unregister_mode
from senet.bench.options import DEFAULT_CONFIGS, ENGINES, EXPORTED, REDUCTIONS, BenchOptions, default_options
from senet.bench.plan import FP32, ModelSpec, Variant, attention_of, build, plan_models, profile, resolve_variants
from senet.bench.report import FIELDS, format_summary, report_markdown, results_csv, summary, write_outputs
from senet.bench.run import Run, Task, run_bench, task_record
from senet.bench.timing import Timed, alternate, on_gpu, run_alternating, sync, time_round

__all__ = [
    "BenchOptions", "DEFAULT_CONFIGS", "ENGINES", "EXPORTED", "FIELDS", "FP32", "Mode", "ModelSpec", "PROBE_MARK",
    "REDUCTIONS", "Run", "Task", "Timed", "Variant", "alternate", "attention_of", "build", "default_options",
    "format_summary", "get_mode", "infer_runner", "measure_peaks", "mode_names", "on_gpu", "plan_models",
    "probe_main", "probe_memory", "profile", "register_mode", "report_markdown", "resolve_variants",
    "results_csv", "run_alternating", "run_bench", "run_probe", "summary", "sync", "task_record", "time_round",
    "train_runner", "unregister_mode", "write_outputs",
]
