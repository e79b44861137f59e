"""What the attention gates do: record every block's gate values and summarise them as the SE paper does.

Hu et al., "Squeeze-and-Excitation Networks" (arXiv 1709.01507), Section 7.2, "Role of excitation":
- Figure 6: for a few classes, the mean excitation of each channel over that class's images, against the
  mean over images of all classes, at several depths (blocks named SE_stageID_blockID). Early blocks
  are nearly class-agnostic, later ones class-specific, and the last ones saturate (most s near 1).
- Figure 7: how the excitations are distributed, block by block along the depth. We summarise each
  block by the mean, std, quantiles and the fraction of gates saturated near 0 and near 1. (The
  paper's own Figure 7, as we read it, plots the per-channel mean and std over the images of one
  class; those per-class std vectors are in the NPZ output, `<block>/class_std`.)

The same summaries apply to every registered attention block (senet.attention): SE's s, ECA's w and
CBAM's channel map M_c are each one weight per channel. Labels are named after the block kind
(SE_4_2, ECA_4_2, CBAM_4_2). CBAM's spatial map M_s has no channels; record_gates returns it on request
(the VisualDL histograms take it), the figures do not.

Recording is senet.attention.gates.record_gates (also what the trainer's VisualDL histograms use).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from senet.attention import REGISTRY, attention_blocks, kind_of, split_arch
from senet.attention.gates import CHANNEL, record_gates
from senet.checkpoint import load_weights
from senet.data import Loader, build_dataset, normalize_batch
from senet.data.loader import ShardedBatchSampler
from senet.device import device_notices
from senet.resnet import build_model

LOW, HIGH = 0.05, 0.95  # a gate below LOW counts as saturated near 0, above HIGH near 1
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MAX_PLOT_CHANNELS = 64  # Figure 6 shows evenly spaced channels (the paper shows 50 sampled ones)


# --------------------------------------------------------------------------- recording


def paper_label(name: str, kind: str = "SE") -> str:
    """ "layer3.1.se" -> "SE_4_2" (kind "ECA": "ECA_4_2"), the SE paper's SE_stageID_blockID named after
    the block kind. Its stage 2 (conv2_x) is our layer1. The slot is `se` for every kind (senet.resnet)."""
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.se", name)
    return f"{kind}_{int(m[1]) + 1}_{int(m[2]) + 1}" if m else name


def kind_title(model: nn.Layer) -> str:
    """The registry title of the model's attention blocks ("SE", "ECA", "CBAM"); "SE" without any."""
    blocks = list(attention_blocks(model).values())
    return kind_of(blocks[0]).title if blocks else "SE"


def collect(model: nn.Layer, loader, cfg: dict, data_format: str = "NCHW") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run a loader of (uint8 images, labels) through `model`: ({block: channel gates [N, C]}, labels [N])."""
    parts: dict[str, list[np.ndarray]] = {}
    labels = []
    for images, y in loader:
        if not y.shape[0]:  # a batch of only bad images, skipped (data.on_bad_image=skip)
            continue
        x = normalize_batch(images, cfg["data"]["mean"], cfg["data"]["std"], data_format)
        for name, s in record_gates(model, x).items():
            parts.setdefault(name, []).append(s)
        labels.append(y.numpy())
    if not labels:
        return {}, np.zeros(0, dtype=np.int64)
    return {k: np.concatenate(v) for k, v in parts.items()}, np.concatenate(labels)


# --------------------------------------------------------------------------- statistics


def default_blocks(names: Sequence[str]) -> list[str]:
    """The paper's Figure 6 choice, generalised: the last block of every stage but the last, then the
    first, middle and last block of the last stage (SE_2_3, SE_3_4, SE_4_6, SE_5_1..3 on ResNet-50)."""
    stages: dict[str, list[str]] = {}
    for name in names:
        m = re.fullmatch(r"(layer\d+)\.\d+\.se", name)
        if not m:  # not one of our ResNets: six blocks evenly along the depth
            return [names[i] for i in sorted(set(np.linspace(0, len(names) - 1, min(6, len(names))).astype(int)))]
        stages.setdefault(m[1], []).append(name)
    groups = list(stages.values())
    last = groups[-1]
    picks = [g[-1] for g in groups[:-1]] + [last[0], last[len(last) // 2], last[-1]]
    return list(dict.fromkeys(picks))


def resolve_blocks(wanted: Sequence[str] | None, names: Sequence[str], kind: str = "SE") -> list[str]:
    """Block names from "layer3.1.se", "layer3.1" or the paper's label ("SE_4_2"; "ECA_4_2" for kind
    "ECA"); the default choice if none."""
    if not wanted:
        return default_blocks(names)
    by_label = (
        {paper_label(n, kind): n for n in names} | {n.removesuffix(".se"): n for n in names} | {n: n for n in names}
    )
    missing = [w for w in wanted if w not in by_label]
    if missing:
        raise ValueError(
            f"unknown {kind} block(s) {missing}; this model has {', '.join(names)} (or the "
            f"paper-style names {paper_label(names[0], kind)} ... {paper_label(names[-1], kind)})"
        )
    return [by_label[w] for w in wanted]


def resolve_classes(wanted: Sequence[str] | None, class_names: Sequence[str], count: int = 4) -> list[int]:
    """Class indices from names (wnids, "airplane", "3") or integer indices; by default `count` classes
    spread evenly over the label range."""
    k = len(class_names)
    if not wanted:
        return sorted({int(round(i)) for i in np.linspace(0, k - 1, min(count, k))})
    out = []
    for w in wanted:
        if w in class_names:
            out.append(list(class_names).index(w))
        elif w.isdigit() and int(w) < k:
            out.append(int(w))
        else:
            raise ValueError(
                f"unknown class {w!r}: give a class name (e.g. {', '.join(class_names[:3])}) or an index 0..{k - 1}"
            )
    return out


def block_stats(s: np.ndarray) -> dict[str, Any]:
    """The distribution of one block's channel gates [N, C] over all images and channels."""
    return {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
        "frac_low": float((s < LOW).mean()),
        "frac_high": float((s > HIGH).mean()),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(s, QUANTILES))},
    }


def excitation_stats(
    gates: dict[str, np.ndarray], labels: np.ndarray, in_sample: np.ndarray, classes: Sequence[int], kind: str = "SE"
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per block: scalar statistics (JSON) and per-channel arrays (NPZ); labels named after `kind`.

    The distribution and the all-classes means use the uniform sample only (`in_sample`); the class
    means use every recorded image of the class. `class_gap` is the mean |class mean - all-classes mean|
    over the chosen classes and the channels: 0 for a class-agnostic block.
    """
    rows, arrays = [], {}
    counts = np.array([(labels == k).sum() for k in classes])
    for depth, (name, s) in enumerate(gates.items()):
        sample = s[in_sample]
        all_mean = sample.mean(axis=0)
        class_mean = np.full((len(classes), s.shape[1]), np.nan, dtype=np.float32)
        class_std = np.full_like(class_mean, np.nan)
        for i, k in enumerate(classes):
            if counts[i]:
                class_mean[i], class_std[i] = s[labels == k].mean(axis=0), s[labels == k].std(axis=0)
        seen = counts > 0
        gap = float(np.abs(class_mean[seen] - all_mean).mean()) if seen.any() else None
        rows.append(
            {
                "name": name,
                "label": paper_label(name, kind),
                "depth": depth,
                "channels": int(s.shape[1]),
                **block_stats(sample),
                "class_gap": gap,
            }
        )
        arrays |= {
            f"{name}/all_mean": all_mean,
            f"{name}/all_std": sample.std(axis=0),
            f"{name}/class_mean": class_mean,
            f"{name}/class_std": class_std,
        }
    return rows, arrays


# --------------------------------------------------------------------------- plots and text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_class_profiles(
    arrays: dict[str, np.ndarray],
    blocks: Sequence[str],
    class_names: Sequence[str],
    path: str,
    title: str = "",
    kind: str = "SE",
) -> None:
    """Figure 6: per block, the mean excitation of each channel for each chosen class and for all classes."""
    plt = _pyplot()
    cols = min(3, len(blocks))
    rows = -(-len(blocks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, blocks):
        all_mean, class_mean = arrays[f"{name}/all_mean"], arrays[f"{name}/class_mean"]
        channels = np.unique(np.linspace(0, len(all_mean) - 1, min(MAX_PLOT_CHANNELS, len(all_mean))).astype(int))
        x = np.arange(len(channels))
        for cname, m in zip(class_names, class_mean):
            ax.plot(x, m[channels], lw=1.2, label=cname)
        ax.plot(x, all_mean[channels], "k--", lw=1.5, label="all")
        step = f", every {channels[1] - channels[0]}th" if len(channels) > 1 and channels[1] - channels[0] > 1 else ""
        ax.set_title(f"{paper_label(name, kind)} ({name}, C={len(all_mean)})", fontsize=10)
        ax.set_xlabel(f"channel index{step}")
        ax.set_ylabel(f"mean {kind} channel gate")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(blocks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=min(len(labels), 6), fontsize=9, title="class")
    fig.suptitle(title or "Mean channel gate: chosen classes vs all classes", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # 0.6 inch on top for title and legend
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_depth(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Figure 7: the distribution of the excitations block by block along the depth, and its saturation."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(7.0, 0.32 * len(rows) + 3), 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    x = np.arange(len(rows))
    boxes = [
        {
            "label": r["label"],
            "med": r["quantiles"]["0.5"],
            "q1": r["quantiles"]["0.25"],
            "q3": r["quantiles"]["0.75"],
            "whislo": r["quantiles"]["0.05"],
            "whishi": r["quantiles"]["0.95"],
            "fliers": [],
        }
        for r in rows
    ]
    top.bxp(boxes, positions=x, showfliers=False, widths=0.6)
    top.errorbar(
        x,
        [r["mean"] for r in rows],
        yerr=[r["std"] for r in rows],
        fmt="o",
        ms=3,
        color="C3",
        capsize=2,
        label="mean ± std",
    )
    top.set_ylabel("channel gate")
    top.set_title("boxes: quartiles, median; whiskers: 5th-95th percentile", fontsize=9)
    top.legend(loc="best", fontsize=9)
    bottom.plot(x, [100 * r["frac_low"] for r in rows], "v-", label=f"s < {LOW}")
    bottom.plot(x, [100 * r["frac_high"] for r in rows], "^-", label=f"s > {HIGH}")
    bottom.set_ylabel("saturated gates %")
    bottom.legend(loc="best", fontsize=9)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        for i in range(1, len(rows)):  # stage boundaries
            if rows[i]["label"].split("_")[:2] != rows[i - 1]["label"].split("_")[:2]:
                ax.axvline(i - 0.5, color="grey", lw=0.8, ls=":")
    every = max(1, len(rows) // 30)  # keep tick labels readable on deep nets
    bottom.set_xticks(x[::every], [r["label"] for r in rows][::every], rotation=90, fontsize=8)
    fig.suptitle(title or "Channel gates along the depth", x=0.02, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def summary_text(report: dict[str, Any]) -> str:
    """A short readable summary: one line per block, then what stands out."""
    m, rows = report["meta"], report["blocks"]
    weights = m["weights"] or "random init, NOT trained: says nothing about a trained network"
    lines = [
        f"{m['kind']} channel gates of {m['arch']} ({weights}) on {m['data']}/{m['split']}",
        f"images: {m['sample_images']} sampled uniformly (of {m['split_images']}), "
        f"+{m['extra_images']} more of the chosen classes; classes: "
        + ", ".join(f"{n} ({c})" for n, c in zip(m["class_names"], m["class_images"])),
        "",
        f"{'block':<14}{'paper':<9}{'C':>5}{'mean':>7}{'std':>7}{'<' + str(LOW):>7}{'>' + str(HIGH):>7}"
        f"{'q05':>7}{'median':>7}{'q95':>7}{'class gap':>10}",
    ]
    for r in rows:
        q = r["quantiles"]
        lines.append(
            f"{r['name']:<14}{r['label']:<9}{r['channels']:>5}{r['mean']:>7.3f}{r['std']:>7.3f}"
            f"{100 * r['frac_low']:>6.1f}%{100 * r['frac_high']:>6.1f}%{q['0.05']:>7.3f}{q['0.5']:>7.3f}"
            f"{q['0.95']:>7.3f}{_fmt(r['class_gap']):>10}"
        )
    gaps = [r for r in rows if r["class_gap"] is not None]
    if gaps:
        first, last = gaps[0], gaps[-1]
        peak = max(gaps, key=lambda r: r["class_gap"])
        lines += [
            "",
            f"class gap (mean |class mean - all-classes mean|, 0 = class-agnostic): {first['label']} "
            f"{first['class_gap']:.3f} -> {last['label']} {last['class_gap']:.3f}; "
            f"largest at {peak['label']} ({peak['class_gap']:.3f})",
        ]
    high = max(rows, key=lambda r: r["frac_high"])
    low = max(rows, key=lambda r: r["frac_low"])
    lines.append(
        f"most saturated near 1: {high['label']} ({100 * high['frac_high']:.1f}% of gates > {HIGH}); "
        f"near 0: {low['label']} ({100 * low['frac_low']:.1f}% < {LOW})"
    )
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any], arrays: dict[str, np.ndarray], out_dir: str, raw: dict[str, np.ndarray] | None = None
) -> dict[str, str]:
    """se_stats.json, se_stats.npz, the two PNGs and summary.txt (and excitations.npz with raw)."""
    os.makedirs(out_dir, exist_ok=True)
    m = report["meta"]
    paths = {
        name: os.path.join(out_dir, name)
        for name in (
            "se_stats.json",
            "se_stats.npz",
            "fig6_class_excitations.png",
            "fig7_depth_distribution.png",
            "summary.txt",
        )
    }
    with open(paths["se_stats.json"], "w") as f:
        json.dump(report, f, indent=2)
    np.savez(
        paths["se_stats.npz"],
        blocks=np.array([r["name"] for r in report["blocks"]]),
        classes=np.array(m["classes"]),
        class_names=np.array(m["class_names"]),
        **arrays,
    )
    what = f"{m['arch']} on {m['data']}/{m['split']}" + ("" if m["weights"] else " (random init)")
    plot_class_profiles(
        arrays,
        m["plot_blocks"],
        m["class_names"],
        paths["fig6_class_excitations.png"],
        f"Mean {m['kind']} gate per channel, chosen classes vs all: {what}",
        m["kind"],
    )
    plot_depth(
        report["blocks"], paths["fig7_depth_distribution.png"], f"{m['kind']} channel gates along the depth: {what}"
    )
    with open(paths["summary.txt"], "w") as f:
        f.write(summary_text(report))
    if raw is not None:
        paths["excitations.npz"] = os.path.join(out_dir, "excitations.npz")
        np.savez_compressed(paths["excitations.npz"], **raw)
    return paths


# --------------------------------------------------------------------------- end to end


class _Subset(paddle.io.Dataset):
    def __init__(self, dataset: paddle.io.Dataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]


def analyze(
    cfg: dict,
    split: str = "val",
    samples: int = 1000,
    classes: Sequence[str] | None = None,
    blocks: Sequence[str] | None = None,
    per_class: int = 50,
    out_dir: str | None = None,
    raw: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the model (with cfg model.weights if set), record its channel gates on `split` and write the report.

    Images: `samples` drawn uniformly from the split (all of it if smaller) for the distributions and the
    all-classes means, plus up to `per_class` images of each chosen class for the class means.
    Returns {"meta", "blocks", "paths"}.
    """
    data_format = device_notices(cfg)["data_format"]
    paddle.seed(cfg["train"]["seed"])  # without weights, the same random model every time
    model = build_model({**cfg, "train": {**cfg["train"], "data_format": data_format}})
    entry, _ = split_arch(cfg["model"]["arch"])
    names = [name for name, block in attention_blocks(model).items() if CHANNEL in block.gates()]
    if not names:
        stages = f" (model.{entry.name}.stages {cfg['model'][entry.name]['stages']})" if entry else ""
        raise ValueError(
            f"model.arch {cfg['model']['arch']} has no attention blocks with channel gates{stages}; "
            f"analyse a model with them ({', '.join(k + '_' for k in REGISTRY)})"
        )
    kind = kind_title(model)
    plot_blocks = resolve_blocks(blocks, names, kind)
    if cfg["model"]["weights"]:
        load_weights(
            model, cfg["model"]["weights"], trust=cfg["model"]["trust_pickle"], expected_arch=cfg["model"]["arch"]
        )
    dataset = build_dataset(cfg, split)
    labels_all = np.asarray(dataset.labels)
    chosen = resolve_classes(classes, dataset.classes)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False))
    extra = np.setdiff1d(np.concatenate([np.flatnonzero(labels_all == k)[:per_class] for k in chosen]), sample)

    def run(indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        sampler = ShardedBatchSampler(len(indices), cfg["data"]["batch_size"], 0, 1, shuffle=False, seed=0)
        loader = Loader(_Subset(dataset, indices), sampler, cfg["data"]["num_workers"], cfg["data"]["on_bad_image"])
        return collect(model, loader, cfg, data_format)

    gates, labels = run(sample)
    in_sample = np.ones(len(labels), dtype=bool)
    if len(extra):
        more, more_labels = run(extra)
        gates = {k: np.concatenate([v, more[k]]) for k, v in gates.items()}
        labels = np.concatenate([labels, more_labels])
        in_sample = np.concatenate([in_sample, np.zeros(len(more_labels), dtype=bool)])
    rows, arrays = excitation_stats(gates, labels, in_sample, chosen, kind)
    meta = {
        "arch": cfg["model"]["arch"],
        "weights": cfg["model"]["weights"],
        "data": cfg["data"]["name"],
        "split": split,
        "split_images": len(dataset),
        "sample_images": int(in_sample.sum()),
        "extra_images": int((~in_sample).sum()),
        "classes": chosen,
        "class_names": [str(dataset.classes[k]) for k in chosen],
        "class_images": [int((labels == k).sum()) for k in chosen],
        "plot_blocks": plot_blocks,
        "thresholds": {"low": LOW, "high": HIGH},
        "kind": kind,
        "attention": entry.name,
        "options": cfg["model"].get(entry.name, {}),
    }
    report = {"meta": meta, "blocks": rows}
    raw_arrays = None
    if raw:
        raw_arrays = {k: v.astype(np.float16) for k, v in gates.items()} | {"labels": labels, "in_sample": in_sample}
    out_dir = out_dir or os.path.join(cfg["output_dir"], "se_analysis")
    report["paths"] = write_report(report, arrays, out_dir, raw_arrays)
    return report
