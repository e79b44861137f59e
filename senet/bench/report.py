"""The report: the summary of a run's records, report.md, results.csv and the plots, and the terminal lines.

Every figure here is read from the records of results.json (senet.bench.run.task_record): the
headline is each attention model's time ratio against its plain model (SE at its config's r, ECA
and CBAM at their configs' settings), our plain model against paddle.vision's, the exported
engines' speed-ups over dygraph, and the extra multiply-adds of each attention model.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from senet import isa
from senet.bench.bandwidth import BYTES_PER_WEIGHT, weights_read_ms
from senet.bench.modes import get_mode, mode_names
from senet.bench.options import ENGINES
from senet.compare import PAPER_FIGURES

# Hu et al., Section 4: +0.26% multiply-adds for SE-ResNet-50; the mode entries carry the paper's timings.
PAPER_GMACS = (3.86, 3.87)
# Each block's paper on the cost of ResNet-50 with it (the papers' "FLOPs" are multiply-adds), beside ours
# in the headline: SE's from Section 4, ECA's and CBAM's from senet.compare's one table of paper figures.
PAPER_MACS = {
    "se": f"+0.26% ({PAPER_GMACS[0]} -> {PAPER_GMACS[1]} GMACs, Hu et al.)",
    **{kind: PAPER_FIGURES[f"{kind}_resnet50"].source for kind in ("eca", "cbam")},
}
PARITY_TARGET = 0.98  # issue 5: our plain model at least 0.98 of paddle.vision's images/s

FIELDS = [
    "model",
    "reduction",
    "name",
    "reference",
    "sweep",
    "mode",
    "engine",
    "precision",
    "data_format",
    "device",
    "threads",
    "batch_size",
    "image_size",
    "images_per_s",
    "images_per_s_min",
    "images_per_s_max",
    "latency_ms",
    "latency_ms_min",
    "latency_ms_max",
    "overhead_vs_plain",
    "overhead_min",
    "overhead_max",
    "plain_model",
    "peak_memory_mb",
    "memory_kind",
    "params",
    "gmacs",
    "warmup_rounds",
    "repeats",
    "calls_per_round",
    "attention",
]


def _find(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _label(r: dict) -> str:
    variant = "" if (r["precision"], r["data_format"]) == ("fp32", "NCHW") else f" {r['precision']} {r['data_format']}"
    return f"{r['name']}, {r['engine']}{variant}"


def _kinds(records: list[dict]) -> str:
    """ "SE, ECA and CBAM": the attention blocks of the run, in the order of its models."""
    from senet.attention import REGISTRY

    kinds = list(dict.fromkeys(REGISTRY[r["attention"]].title for r in records if r["attention"]))
    return " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds) or "attention"


def summary(records: list[dict]) -> dict:
    """The headline figures of a run, each keyed by "model, engine [variant]".

    `<mode>_ratio`: each attention model's time against its plain model, per mode (SE at its
    config's r, not the sweep); parity: our plain model against paddle.vision (time(vision) /
    time(ours), i.e. our images/s over theirs); speed-ups of the exported engines over dygraph;
    the attention models' extra multiply-adds.

    A speed-up compares two records of the same model, mode, precision and layout only, and its
    key names both sides: the exported graphs are fp32 NCHW, so on a GPU they are set against the
    fp32 dygraph run (`--amp none`), never against AMP dygraph.
    """
    out: dict[str, dict] = {f"{m}_ratio": {} for m in mode_names()}
    out.update(parity={}, engine_speedup={}, gmacs_increase={})
    for r in records:
        if r["attention"] and not r["sweep"] and r["overhead_vs_plain"] is not None:
            out.setdefault(f"{r['mode']}_ratio", {})[_label(r)] = r["overhead_vs_plain"]
            plain = _find(records, name=r["plain_model"])
            if r["gmacs"] and plain and plain[0]["gmacs"]:
                out["gmacs_increase"][r["name"]] = r["gmacs"] / plain[0]["gmacs"] - 1
        if r["reference"] and r["overhead_vs_plain"] is not None:
            out["parity"][f"{r['mode']}, {r['plain_model']} / {_label(r)}"] = r["overhead_vs_plain"]
        if r["engine"] != "dygraph" and not r["sweep"]:
            base = _find(
                records,
                name=r["name"],
                mode=r["mode"],
                engine="dygraph",
                precision=r["precision"],
                data_format=r["data_format"],
            )
            if base:
                side = f"{r['precision']} {r['data_format']}"
                key = f"{r['mode']}, {r['name']}, {r['engine']} {side} over dygraph {side}"
                out["engine_speedup"][key] = base[0]["latency_ms"] / r["latency_ms"]
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _paper_ratio(paper: tuple[float, float, str]) -> str:
    return f"x{paper[1] / paper[0]:.2f} ({paper[0]:.0f} -> {paper[1]:.0f} {paper[2]})"


def _headline(records: list[dict], s: dict) -> list[str]:
    """The headline table: each measure beside issue 5's target and the paper's figure (both SE's only)."""
    kind = {_label(r): r["attention"] for r in records} | {r["name"]: r["attention"] for r in records}
    rows = []
    for name in mode_names():
        mode = get_mode(name)
        for k, v in s.get(f"{name}_ratio", {}).items():
            se = kind.get(k) == "se"
            rows.append(
                (
                    f"{mode.title}, {k}",
                    f"x{v:.3f}",
                    f"<= {mode.target}" if se and mode.target else "-",
                    _paper_ratio(mode.paper) if se and mode.paper else "-",
                )
            )
    rows += [(f"images/s, {k}", f"x{v:.3f}", f">= {PARITY_TARGET}", "-") for k, v in s["parity"].items()]
    rows += [
        (f"multiply-adds, {k}", f"+{100 * v:.2f}%", "-", PAPER_MACS.get(kind.get(k), "-"))
        for k, v in s["gmacs_increase"].items()
    ]
    rows += [(f"speed-up, {k}", f"x{v:.2f}", "-", "-") for k, v in s["engine_speedup"].items()]
    return [
        "",
        "## Headline",
        "",
        f"Time ratios of each attention model ({_kinds(records)}), at its config's settings (SE: its r, not the "
        "sweep), against its plain model, from the same run, mode and engine: the median of the per-round "
        "ratios. Parity: our plain "
        "model's images/s over paddle.vision's. The targets (issue 5) and the timings of Hu et al. (Sec. 4) "
        "are SE's.",
        "",
        "| measure | ours | target (issue 5) | paper |",
        "|---|---|---|---|",
    ] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]


def _environment(env: dict, notices: list[str]) -> list[str]:
    features = env.get("cpu_features")
    lines = [
        f"- Paddle {env['paddle_version']} ({env['paddle_commit'][:10]}), oneDNN {env['onednn']}, "
        f"device {env['device']}" + (f" ({env.get('gpu_model')})" if env.get("gpu_model") else ""),
        f"- CPU: {env['cpu_model']}, {env['cores']} cores, {env['threads']} threads; "
        f"load average {env.get('load_average_start')} at the start, {env.get('load_average_end')} at the end",
        f"- instruction sets: {isa.summary(features) if features is not None else 'unknown'}",
        f"- ONNX Runtime {env.get('onnxruntime')}, OpenVINO {env.get('openvino')}, paddle2onnx "
        f"{env.get('paddle2onnx')}, Python {env['python']}, git {env.get('git_commit')}",
    ]
    load = env.get("load_average_start") or [0]
    if load and load[0] > 0.5 * env["cores"]:
        lines.append(
            f"- **The machine was busy** (load {load[0]} on {env['cores']} cores): absolute figures are "
            f"low and noisy; the ratios pair rounds of the same run, so they suffer less."
        )
    return lines + [f"- notice: {n}" for n in notices]


def _all_measurements(env: dict, records: list[dict]) -> list[str]:
    modes = mode_names()
    lines = [
        "",
        "## All measurements",
        "",
        "Medians over the timed samples, min-max in brackets; train and infer are per step of `batch` "
        "images, latency per image. Overhead: time ratio against the plain model (median of the "
        "per-round ratios, min-max in brackets). Peak memory: "
        + (
            "device memory allocated"
            if env["device"] == "gpu"
            else "resident set of a fresh process that ran the model in this mode (and the cheaper modes before)"
        )
        + ".",
        "",
        "| model | r | mode | engine | precision | batch | px | images/s | ms | overhead | peak MB | params | GMACs |",
        "|" + "---|" * 13,
    ]
    for r in sorted(
        records,
        key=lambda r: (
            modes.index(r["mode"]) if r["mode"] in modes else len(modes),
            ENGINES.index(r["engine"]),
            r["precision"],
            r["data_format"],
            r["reference"],
            r["model"],
            r["reduction"] or 0,
        ),
    ):
        ovh = (
            "-"
            if r["overhead_vs_plain"] is None
            else f"x{r['overhead_vs_plain']:.3f} ({r['overhead_min']:.3f}-{r['overhead_max']:.3f})"
        )
        lines.append(
            f"| {r['model']} | {_fmt(r['reduction'])} | {r['mode']} | {r['engine']} | {r['precision']} "
            f"{r['data_format']} | {r['batch_size']} | {r['image_size']} | {r['images_per_s']:.2f} "
            f"({r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f}) | {r['latency_ms']:.1f} "
            f"({r['latency_ms_min']:.1f}-{r['latency_ms_max']:.1f}) | {ovh} | {_fmt(r['peak_memory_mb'], 0)} | "
            f"{_fmt(r['params'])} | {_fmt(r['gmacs'], 3)} |"
        )
    return lines


def _column(r: dict) -> str:
    return f"{r['engine']} {r['precision']}"


def engine_tables(records: list[dict], limit: dict | None) -> list[str]:
    """The engines x precisions tables: batch-1 latency (ms) and throughput at the larger batch (images/s) of
    each model at its config's settings, each attention model's time ratio against the plain model in the
    same engine and precision, and the limit line (weights read once at the measured bandwidth)."""
    rows = [r for r in records if not r["sweep"] and not r["reference"] and r["precision"] in BYTES_PER_WEIGHT]
    lines: list[str] = []
    for mode, measure, value in (
        ("latency", "batch-1 latency, ms (median)", lambda r: f"{r['latency_ms']:.1f}"),
        ("infer", "throughput, images/s (median)", lambda r: f"{r['images_per_s']:.1f}"),
    ):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        columns = sorted(
            {_column(r) for r in rs},
            key=lambda c: (ENGINES.index(c.split()[0]), list(BYTES_PER_WEIGHT).index(c.split()[1])),
        )
        names = list(dict.fromkeys(r["name"] for r in rs))
        cell = {(r["name"], _column(r)): r for r in rs}
        lines += [
            "",
            f"### {measure}, batch {rs[0]['batch_size']}",
            "",
            "| model | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name in names:
            lines.append(
                f"| {name} | " + " | ".join(value(cell[name, c]) if (name, c) in cell else "-" for c in columns) + " |"
            )
        for name in [n for n in names if any(cell.get((n, c), {}).get("attention") for c in columns)]:
            plain = next(cell[name, c]["plain_model"] for c in columns if (name, c) in cell)
            ratios = [cell.get((name, c), {}).get("overhead_vs_plain") for c in columns]
            lines.append(f"| {name} / {plain} (time) | " + " | ".join(f"{v:.3f}" if v else "-" for v in ratios) + " |")
        if mode == "latency" and limit:
            # Every model's floor: at the limit, an attention model's ratio is its ratio of weights (SE-ResNet-50:
            # 28.1 / 25.6 M = x1.099), not of multiply-adds (x1.004).
            for name in names:
                params = next((cell[name, c]["params"] for c in columns if (name, c) in cell), None)
                if params:
                    lines.append(
                        f"| limit: {name}'s weights read once, ms | "
                        + " | ".join(
                            f"{weights_read_ms(params, c.split()[1], limit['read_gb_per_s']):.1f}" for c in columns
                        )
                        + " |"
                    )
    if limit and lines:
        lines += [
            "",
            f"Limit line: batch-1 latency cannot beat reading the weights once; at the measured "
            f"{limit['read_gb_per_s']:.1f} GB/s ({limit['threads']} threads reading a {limit['buffer_mb']} MB "
            f"buffer, best of {limit['passes']}) that takes params x {BYTES_PER_WEIGHT['fp32']} bytes in fp32, "
            f"x {BYTES_PER_WEIGHT['bf16']} in bf16, x {BYTES_PER_WEIGHT['int8']} in int8.",
        ]
    return (["", "## Engines and precisions"] + lines) if lines else []


def _loader(loader: dict, records: list[dict]) -> list[str]:
    """The loader section: plain decoding, our loader and DALI side by side (senet.data.check.bench's figures)."""
    lines = [
        "",
        "## Data loader",
        "",
        f"{loader['images']} {loader['files']} per repeat ({loader['file_size']}), cropped to "
        f"{loader['image_size']} px, batch {loader['batch_size']}, {loader['workers']} workers (DALI: as many "
        f"threads); mean ± std over {loader['repeats']} repeats. Images/s per core is images per CPU-second "
        "over all processes and threads.",
        "",
        "| pipeline | images/s | CPU ms/image | images/s per core |",
        "|---|---|---|---|",
    ]
    rows = [
        ("plain decode+crop (no batching, nothing handed back)", "plain"),
        ("our loader (paddle.io.DataLoader, OpenCV)", "loader"),
        (f"NVIDIA DALI, {loader.get('dali_decoder')} decoder", "dali"),
    ]
    for label, key in rows:
        if loader.get(f"{key}_images_per_s") is None:
            if key == "dali":
                lines.append(
                    f"| NVIDIA DALI | {loader.get('dali_skipped') or 'not installed (make install DALI=1)'} | - | - |"
                )
            continue
        lines.append(
            f"| {label} | {loader[f'{key}_images_per_s']:,.0f} ± {loader[f'{key}_std']:,.0f} | "
            f"{_fmt(loader.get(f'{key}_cpu_ms_per_image'), 2)} | "
            f"{_fmt(loader.get(f'{key}_images_per_cpu_s'), 0)} |"
        )
    if loader.get("ratio"):
        lines += ["", f"Our loader keeps {100 * loader['ratio']:.0f}% of plain decoding's images/s."]
    train = [r for r in records if r["mode"] == "train"]
    if train:
        fastest = max(train, key=lambda r: r["images_per_s"])
        lines.append(
            f"The fastest training step here consumes {fastest['images_per_s']:.1f} images/s ({fastest['name']})."
        )
    return lines


def report_markdown(
    env: dict, records: list[dict], notices: list[str], loader: dict | None, limit: dict | None = None
) -> str:
    """report.md: environment, headline figures beside the paper's and the targets, the full table, the plots."""
    s = summary(records)
    lines = (
        [
            f"# Cost of {_kinds(records)} against the plain ResNet, {env.get('started', '')}",
            "",
            f"`{env.get('command', '')}`",
            "",
        ]
        + _environment(env, notices)
        + _headline(records, s)
    )
    for r in [r for r in records if r["reference"] and r["gmacs"]][:1]:
        ours = _find(records, name=r["plain_model"])
        if ours and ours[0]["gmacs"] and abs(r["gmacs"] / ours[0]["gmacs"] - 1) > 0.01:
            lines += [
                "",
                f"{r['model']} does {r['gmacs']:.2f} GMACs per image against our "
                f"{ours[0]['gmacs']:.2f} (it puts the stride-2 on the 3x3 conv; see `model.stride_in_1x1`): "
                f"per multiply-add, parity is the ratio above x {r['gmacs'] / ours[0]['gmacs']:.3f}.",
            ]
    latency = get_mode("latency").paper if "latency" in mode_names() else None
    dyg = [
        r
        for r in records
        if r["mode"] == "latency" and r["engine"] == "dygraph" and r["attention"] is None and not r["reference"]
    ]
    if dyg and latency:
        lines += [
            "",
            f"For scale: the paper's CPU took {latency[0]:.0f} ms per image for "
            f"ResNet-50; here {dyg[0]['name']} takes {dyg[0]['latency_ms']:.0f} ms in dygraph.",
        ]
    lines += engine_tables(records, limit)
    lines += _all_measurements(env, records)
    if loader:
        lines += _loader(loader, records)
    lines += [
        "",
        "## Plots",
        "",
        "![throughput against parameters](throughput_vs_params.png)",
        "",
        "![SE overhead against r](se_overhead_vs_r.png)",
        "",
    ]
    return "\n".join(lines)


def results_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in FIELDS})
    return buf.getvalue()


def _series(r: dict) -> str:
    return (
        r["engine"]
        + ("" if r["precision"] == "fp32" else f" {r['precision']}")
        + ("" if r["data_format"] == "NCHW" else f" {r['data_format']}")
    )


def _short(r: dict) -> str:
    if r["reference"]:
        return "vision"
    if r["attention"] == "se":
        return f"r={r['reduction']}"
    return r["attention"] or "plain"


def _throughput_plot(plt: Any, records: list[dict]) -> Any:
    modes = [m for m in mode_names() if any(r["mode"] == m and r["params"] for r in records)]
    if not modes:
        return None
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = [r for r in records if r["mode"] == mode and r["params"]]
        for series in sorted({_series(r) for r in rs}):
            pts = sorted((r for r in rs if _series(r) == series), key=lambda r: r["params"])
            ax.plot([r["params"] / 1e6 for r in pts], [r["images_per_s"] for r in pts], "o", label=series)
            for r in pts:
                ax.annotate(
                    _short(r),
                    (r["params"] / 1e6, r["images_per_s"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        ax.set(
            title=f"{mode} (batch {rs[0]['batch_size']})", xlabel="parameters (millions)", ylabel="images/s (median)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _se_overhead_plot(plt: Any, records: list[dict]) -> Any:
    se = [r for r in records if r["attention"] == "se" and r["overhead_vs_plain"] is not None]
    if not se:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for series in sorted({(r["mode"], _series(r)) for r in se}):
        pts = sorted((r for r in se if (r["mode"], _series(r)) == series), key=lambda r: r["reduction"])
        y = [r["overhead_vs_plain"] for r in pts]
        spread = [[v - r["overhead_min"] for v, r in zip(y, pts)], [r["overhead_max"] - v for v, r in zip(y, pts)]]
        ax.errorbar(
            [r["reduction"] for r in pts], y, yerr=spread, fmt="o-", capsize=3, label=f"{series[0]}, {series[1]}"
        )
    ax.axhline(1.0, color="black", lw=0.8)
    papers = [get_mode(m) for m in mode_names() if get_mode(m).paper]
    for mode, style in zip(papers, ("--", ":", "-.")):
        ax.axhline(
            mode.paper[1] / mode.paper[0],
            color="gray",
            ls=style,
            lw=0.8,
            label=f"paper: {mode.title} x{mode.paper[1] / mode.paper[0]:.2f} ({mode.paper[2]})",
        )
    ax.set_xscale("log", base=2)
    rs = sorted({r["reduction"] for r in se})
    ax.set_xticks(rs, [str(r) for r in rs])
    ax.set_title("SE cost against r (bars: min-max of the paired rounds)", fontsize=10)
    ax.set(xlabel="reduction ratio r", ylabel="time / time of the plain model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot(records: list[dict], folder: str) -> list[str]:
    """throughput_vs_params.png and se_overhead_vs_r.png (matplotlib, Agg); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, make in (("throughput_vs_params.png", _throughput_plot), ("se_overhead_vs_r.png", _se_overhead_plot)):
        fig = make(plt, records)
        if fig is None:
            continue
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_text(path: str, text: str) -> None:
    """Write through a temporary file, so that a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(
    folder: str, env: dict, records: list[dict], notices: list[str], loader: dict | None, limit: dict | None = None
) -> None:
    """results.csv, report.md and the plots (results.json is written by the run as it goes)."""
    write_text(os.path.join(folder, "results.csv"), results_csv(records))
    plot(records, folder)
    write_text(os.path.join(folder, "report.md"), report_markdown(env, records, notices, loader, limit))


def format_summary(run_dir: str) -> str:
    """A few lines for the terminal: the headline figures of a finished run."""
    with open(os.path.join(run_dir, "results.json")) as f:
        data = json.load(f)
    s, kind = data["summary"], {r["name"]: r["attention"] for r in data["results"]}
    titles = {f"{m}_ratio": f"{get_mode(m).title} ratio" for m in mode_names()}
    titles.update(parity="ours / paddle.vision images/s", engine_speedup="speed-up")
    lines = [f"{title}, {label}: x{v:.3f}" for group, title in titles.items() for label, v in s.get(group, {}).items()]
    lines += [
        f"multiply-adds, {k}: +{100 * v:.2f}% (paper: {PAPER_MACS.get(kind.get(k), '-')})"
        for k, v in s["gmacs_increase"].items()
    ]
    env = data["environment"]
    if env.get("cpu_features") is not None:
        lines.append(f"CPU: {env['cpu_model']}; {isa.summary(env['cpu_features'])}")
    limit = data.get("limit")
    if limit:
        lines.append(f"memory bandwidth (read): {limit['read_gb_per_s']:.1f} GB/s")
    lines += [ln for ln in engine_tables(data["results"], limit) if ln.startswith("|") or ln.startswith("###")]
    return "\n".join(lines)
