"""Side-by-side tables of models: parameters, multiply-adds, the attention blocks' share, and (from runs) accuracy.

The papers' reference figures (ImageNet val, single 224x224 centre crop), each shown only beside a
config with exactly that paper's setup (paper_figures):
- SE: Hu et al., Table 2: top-1 / top-5 error in percent and "GFLOPs", multiply-adds (GMACs) in our terms;
- ECA: Wang et al., ECA-Net (CVPR 2020): 80 extra parameters and 4.7e-4 extra GFLOPs over ResNet-50,
  top-1 77.48%;
- CBAM: Woo et al., CBAM (ECCV 2018), ImageNet-1K: ResNet-50 + CBAM 28.09M parameters, 3.864 GFLOPs,
  top-1 error 22.66%;
- RSB: Wightman, Touvron and Jégou, "ResNet strikes back" (2021), Table 1: ResNet-50's top-1 after each
  training procedure A1, A2, A3 (configs/rsb/), beside a config of exactly that procedure (rsb_recipe).
The SE, ECA and CBAM figures stand only beside configs with none of the modern recipes' settings.
Our counts differ from the ECA and CBAM papers' where our convention counts more (docs/analysis.md,
"Our counts beside the papers'"). `error_rows` and ERROR_COLUMNS give the paper's own shape
(error = 100 - accuracy) for sweeps.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from senet.config import DEFAULTS, load_config, safe_yaml
from senet.limits import regular_file_problem

# arch -> (top-1 err, top-5 err, GMACs or None); Hu et al. Table 2, "re-implementation" columns.
PAPER_TABLE2: dict[str, tuple[float, float, float | None]] = {
    "resnet50": (24.80, 7.48, 3.86),
    "se_resnet50": (23.29, 6.62, 3.87),
    "resnet101": (23.17, 6.52, None),
    "se_resnet101": (22.38, 6.07, None),
    "resnet152": (22.42, 6.34, None),
    "se_resnet152": (21.57, 5.73, None),
    "resnext50_32x4d": (22.11, 5.90, None),
    "se_resnext50_32x4d": (21.10, 5.49, None),
    "resnext101_32x4d": (21.18, 5.57, None),
    "se_resnext101_32x4d": (20.70, 5.01, None),
}


HU_TABLE2 = 'Hu et al., "Squeeze-and-Excitation Networks", Table 2'


@dataclass(frozen=True)
class PaperFigures:
    """One paper's ImageNet figures for one network; None where the paper gives none."""

    source: str
    top1_err: float | None = None  # percent
    top5_err: float | None = None
    gmacs: float | None = None  # the paper's "GFLOPs", multiply-adds
    params_m: float | None = None  # millions, as the papers print them
    extra_params: int | None = None  # the attention blocks' own, over the plain network
    extra_gmacs: float | None = None


# arch -> the paper's figures for it. ECA: its abstract's 80 parameters and 4.7e-4 GFLOPs over ResNet-50
# and its ImageNet top-1 77.48% (error 22.52%); it states no top-5 error beside them here.
PAPER_FIGURES: dict[str, PaperFigures] = {
    **{arch: PaperFigures(HU_TABLE2, *ref) for arch, ref in PAPER_TABLE2.items()},
    "eca_resnet50": PaperFigures(
        'Wang et al., "ECA-Net", CVPR 2020: 80 extra params, 4.7e-4 extra GFLOPs, top-1 77.48%',
        top1_err=round(100 - 77.48, 2),
        extra_params=80,
        extra_gmacs=4.7e-4,
    ),
    "cbam_resnet50": PaperFigures(
        'Woo et al., "CBAM", ECCV 2018, ImageNet-1K: ResNet-50 + CBAM 28.09M params, 3.864 GFLOPs, top-1 err 22.66%',
        top1_err=22.66,
        gmacs=3.864,
        params_m=28.09,
    ),
}

# "ResNet strikes back" (Wightman, Touvron and Jégou 2021, arXiv 2110.00476): a plain ResNet-50 trained with
# each of its procedures A1-A3 (Table 1, "Top-1 acc."; ImageNet val at 224 px, crop ratio 0.95). configs/rsb/
# holds them; docs/recipes.md says what each sets. Each is shown beside a config of exactly that procedure
# (rsb_recipe), never beside the SENet recipe's configs, nor those beside it.
RSB_SOURCE = 'Wightman, Touvron and Jégou, "ResNet strikes back", arXiv 2110.00476, Table 1'
RSB_TOP1 = {"A1": 80.4, "A2": 79.8, "A3": 78.1}  # ResNet-50, percent
# The settings that make each procedure, as config keys (lr per 256 images: RSB's at its batch of 2048 x 256 /
# 2048); a config with every one of them follows that procedure. The other settings of configs/rsb/ (warm-up,
# BN and biases spared from decay, clipping) are how timm runs them, not what tells the procedures apart.
_RSB_COMMON = {
    "optimizer.name": "lamb",
    "train.loss": "bce",
    "train.bce_target_thresh": 0.2,
    "train.mixup.cutmix_alpha": 1.0,
    "train.label_smoothing": 0.0,
    "lr_scheduler.name": "cosine",
    "data.eval_crop": 224,
    "data.crop_pct": 0.95,
    "data.random_erasing.prob": 0.0,
}
RSB_RECIPES: dict[str, dict[str, Any]] = {
    "A1": {
        **_RSB_COMMON,
        "train.epochs": 600,
        "data.image_size": 224,
        "optimizer.lr": 5e-3 * 256 / 2048,
        "optimizer.weight_decay": 0.01,
        "train.mixup.alpha": 0.2,
        "data.auto_augment": "rand-m7-mstd0.5-inc1",
        "data.repeated_aug": 3,
        "model.drop_path_rate": 0.05,
    },
    "A2": {
        **_RSB_COMMON,
        "train.epochs": 300,
        "data.image_size": 224,
        "optimizer.lr": 5e-3 * 256 / 2048,
        "optimizer.weight_decay": 0.02,
        "train.mixup.alpha": 0.1,
        "data.auto_augment": "rand-m7-mstd0.5-inc1",
        "data.repeated_aug": 3,
        "model.drop_path_rate": 0.05,
    },
    "A3": {
        **_RSB_COMMON,
        "train.epochs": 100,
        "data.image_size": 160,
        "optimizer.lr": 8e-3 * 256 / 2048,
        "optimizer.weight_decay": 0.02,
        "train.mixup.alpha": 0.1,
        "data.auto_augment": "rand-m6-mstd0.5-inc1",
        "data.repeated_aug": 1,
        "model.drop_path_rate": 0.0,
    },
}
# (arch, procedure) -> RSB's figures; the paper trains the plain ResNet-50 only with all three.
RSB_FIGURES: dict[tuple[str, str], PaperFigures] = {
    ("resnet50", recipe): PaperFigures(
        f"{RSB_SOURCE}: procedure {recipe}, top-1 {top1}%", top1_err=round(100 - top1, 2)
    )
    for recipe, top1 in RSB_TOP1.items()
}
# Settings of issue 25's modern recipes, at the values that turn them off. The SE, ECA and CBAM papers trained
# with none of them, so their figures stand only beside configs that leave every one off.
MODERN_OFF = {
    "optimizer.name": "momentum",
    "train.loss": "ce",
    "train.mixup.alpha": 0.0,
    "train.mixup.cutmix_alpha": 0.0,
    "train.mixup.cutmix_minmax": None,
    "data.auto_augment": None,
    "data.random_erasing.prob": 0.0,
    "data.repeated_aug": 1,
    "model.drop_path_rate": 0.0,
}


def _setting(cfg: dict, key: str) -> Any:
    """cfg["a"]["b"] for "a.b"; a missing setting (a run folder older than it) is its default."""
    node, default = cfg, DEFAULTS
    for part in key.split("."):
        node, default = (node or {}).get(part, default[part]), default[part]
    return node


def rsb_recipe(cfg: dict) -> str | None:
    """ "A1", "A2" or "A3" for a config with every setting of that RSB procedure (RSB_RECIPES), else None."""
    for recipe, settings in RSB_RECIPES.items():
        if all(_same(_setting(cfg, k), v) for k, v in settings.items()):
            return recipe
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


# Each block's settings its paper measured with (the options' defaults are the papers'); any other
# setting has no published counterpart.
PAPER_OPTIONS = {
    "se": {"reduction": 16, "squeeze": "avg", "gate": "sigmoid", "placement": "standard", "stages": None, "divisor": 1},
    "eca": {"kernel_size": None, "gamma": 2, "b": 1, "placement": "standard", "stages": None},
    "cbam": {
        "reduction": 16,
        "spatial_kernel": 7,
        "spatial": True,
        "bias": True,
        "placement": "standard",
        "stages": None,
    },
}
# Network options whose default is the paper's network (timm / PaddleClas variants otherwise).
PAPER_MODEL = {"branch_relu": False, "first_block_projection": False}


def paper_figures(cfg: dict) -> PaperFigures | None:
    """The paper's figures for a config with exactly that paper's setup, else None.

    An RSB procedure (rsb_recipe) gets RSB's figures; a config with none of the modern recipes' settings
    (MODERN_OFF) gets the SE, ECA or CBAM paper's; any other recipe gets none.

    A 1000-class model, the block's paper settings (PAPER_OPTIONS) and each arch's original stride
    placement are required, so an ablation (say r = 8) is never shown beside the r = 16 figure.
    """
    from senet.attention import split_arch  # imports paddle; keep `--help` fast
    from senet.resnet import MODELS

    m = cfg["model"]
    arch = m["arch"]
    recipe = rsb_recipe(cfg)
    if recipe is not None:
        ref = RSB_FIGURES.get((arch, recipe))
    elif all(_same(_setting(cfg, k), v) for k, v in MODERN_OFF.items()):
        ref = PAPER_FIGURES.get(arch)
    else:
        ref = None  # a modern recipe, but none whose figures a paper gives
    if ref is None or m["num_classes"] != 1000:
        return None
    entry, base = split_arch(arch)
    options = (m.get(entry.name) or {}) if entry is not None else {}
    if entry is not None and any(options.get(k, v) != v for k, v in PAPER_OPTIONS[entry.name].items()):
        return None
    if any(m.get(k, v) != v for k, v in PAPER_MODEL.items()):
        return None
    return ref if m["stride_in_1x1"] in (None, MODELS[base].stride_in_1x1) else None


def paper_reference(cfg: dict) -> tuple[float | None, float | None, float | None] | None:
    """(top-1 err, top-5 err, GMACs) of paper_figures, the columns senet.sweep shows; None without figures."""
    ref = paper_figures(cfg)
    return (ref.top1_err, ref.top5_err, ref.gmacs) if ref else None


def error_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of build_rows rows with top-1 / top-5 error (100 - accuracy, percent) and their std."""
    out = []
    for row in rows:
        row = dict(row)
        for k in ("top1", "top5"):
            row[k + "_err"] = None if row[k] is None else 100.0 - row[k]
            row[k + "_err_std"] = row[k + "_std"]
        out.append(row)
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def profile_row(cfg: dict, input_size: int) -> dict[str, Any]:
    """One table row for a resolved config: counts only, accuracy left unknown."""
    from senet.attention import split_arch  # imports paddle; keep `--help` fast
    from senet.profile import profile_model
    from senet.resnet import build_model

    arch = cfg["model"]["arch"]
    model = build_model(cfg)
    p = profile_model(model, input_size)
    entry, _ = split_arch(arch)
    return {
        "name": cfg["name"],
        "arch": arch,
        "reduction": (cfg["model"].get(entry.name) or {}).get("reduction") if entry else None,
        "kernel_sizes": stage_kernel_sizes(model),
        "params": p.params,
        "params_total": p.params_total,
        "gmacs": round(p.gmacs, 4),
        "gflops": round(p.gflops, 4),
        "attention_params": p.params_se,
        "attention_gmacs": round(p.macs_se / 1e9, 6),
        "se_params_share": round(p.se_params_share, 5),
        "se_gmacs_share": round(p.se_macs_share, 5),
        "input_size": input_size,
        "top1": None,
        "top1_std": None,
        "top5": None,
        "top5_std": None,
        "runs": 0,
        "images_per_s": None,
        "notes": [],
    }


def stage_kernel_sizes(model) -> list[int] | None:
    """The kernel size k of each stage's attention blocks (ECA's 1D conv: [5, 5, 5, 7] on ECA-ResNet-50),
    first block of each stage; None for blocks without one (SE, CBAM: their width is the reduction r)."""
    from senet.attention import attention_blocks

    per_stage: dict[str, int] = {}
    for name, block in attention_blocks(model).items():
        if hasattr(block, "kernel_size"):
            per_stage.setdefault(name.split(".", 1)[0], block.kernel_size)
    return list(per_stage.values()) or None


def read_run(run_dir: str) -> tuple[dict, dict]:
    """(resolved config, metrics) of a finished or unfinished training run."""
    cfg_path, metrics_path = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "metrics.json")
    problem = regular_file_problem(cfg_path)
    if problem and problem.missing:
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml in it")
    if problem:
        raise ValueError(f"{cfg_path} {problem}")
    with open(cfg_path) as f:
        cfg = safe_yaml(f, cfg_path)  # bounded like any config: a run folder may come from anywhere
    metrics = {}
    problem = regular_file_problem(metrics_path)
    if problem and not problem.missing:
        raise ValueError(f"{metrics_path} {problem}")
    if not problem:
        with open(metrics_path) as f:
            try:
                metrics = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{metrics_path} is not valid JSON ({e})") from None
    return cfg, metrics


def run_note(run_dir: str, cfg: dict, metrics: dict) -> str | None:
    """Why a run's accuracy is missing or partial (for a footnote), or None for a finished, evaluated run.

    A run writes metrics.json when it ends, also when train.max_steps or a signal stopped it; `best`
    is null until its first evaluation.
    """
    if not metrics:
        return f"{run_dir}: no metrics.json (still running, or killed before it could write one): no accuracy"
    stopped_by = metrics.get("stopped_by")
    how = (
        "finished"
        if metrics.get("finished")
        else "stopped by train.max_steps"
        if stopped_by == "max_steps"
        else f"stopped by {stopped_by}"
        if stopped_by
        else "stopped"
    )
    how += f" at step {metrics.get('global_step')}"
    if not metrics.get("best"):
        when = (
            "without an evaluation (train.eval_every: 0)" if metrics.get("finished") else "before its first evaluation"
        )
        return f"{run_dir}: {how}, {when}: no accuracy"
    if not metrics.get("finished"):
        epochs = (cfg.get("train") or {}).get("epochs", "?")
        return (
            f"{run_dir}: {how}, after {metrics.get('epochs_done')} of {epochs} epochs: its best top-1 so far is counted"
        )
    return None


def _bench_throughput(run_dir: str) -> float | None:
    """Training images/s from the newest `make bench` results.json inside the run dir, if any."""
    paths = sorted(glob.glob(os.path.join(run_dir, "**", "results.json"), recursive=True))
    for path in reversed(paths):
        if regular_file_problem(path):  # a FIFO named results.json would block open()
            continue
        with open(path) as f:
            results = json.load(f).get("results", [])
        train = [r["images_per_s"] for r in results if r.get("mode") == "train" and r.get("images_per_s")]
        if train:
            return float(train[0])
    return None


def build_rows(
    config_paths: list[str],
    overrides: list[str],
    run_dirs: list[str],
    input_size: int | None = None,
    paper: bool = False,
) -> list[dict[str, Any]]:
    """Rows for each config (after overrides), plus runs grouped by their config name."""
    rows: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for path in config_paths:
        cfg = load_config(path, overrides)
        configs[cfg["name"]] = cfg
    runs: dict[str, list[tuple[dict, dict, str]]] = {}
    for run_dir in run_dirs:
        cfg, metrics = read_run(run_dir)
        runs.setdefault(cfg["name"], []).append((cfg, metrics, run_dir))
        configs.setdefault(cfg["name"], load_config(os.path.join(run_dir, "config.yaml")))
    for name, cfg in configs.items():
        size = input_size or cfg["data"]["eval_crop"]
        rows[name] = profile_row(cfg, size)
    for name, group in runs.items():
        row = rows[name]
        best = [m["best"] for _, m, _ in group if m.get("best")]  # null before a run's first evaluation
        top1 = [b["top1"] for b in best if b.get("top1") is not None]
        top5 = [b["top5"] for b in best if b.get("top5") is not None]
        row["notes"] = [note for c, m, d in group if (note := run_note(d, c, m))]
        row["top1"], row["top1_std"] = _mean_std(top1)
        row["top5"], row["top5_std"] = _mean_std(top5)
        row["runs"] = len(top1)
        speeds = [s for s in (_bench_throughput(d) or m.get("train_images_per_s") for _, m, d in group) if s]
        row["images_per_s"], _ = _mean_std(speeds)
    out = list(rows.values())
    if paper:
        for row in out:
            ref = paper_figures(configs[row["name"]]) or PaperFigures(None)  # only beside the paper's exact setup
            row.update(
                {
                    f"paper_{k}": getattr(ref, k)
                    for k in ("top1_err", "top5_err", "gmacs", "params_m", "extra_params", "extra_gmacs", "source")
                }
            )
    return out


# "r / k" (key R_OR_K): the reduction ratio r of SE and CBAM, or ECA's kernel size per stage ("k 5,5,5,7");
# CSV writes it as its raw fields, `reduction` and `kernel_sizes`.
R_OR_K = "r_or_k"
COLUMNS = [
    ("name", "name"),
    ("arch", "arch"),
    (R_OR_K, "r / k"),
    ("params", "params"),
    ("params_total", "params (incl. BN stats)"),
    ("gmacs", "GMACs"),
    ("gflops", "GFLOPs (2xMACs)"),
    ("se_params_share", "attn params %"),
    ("se_gmacs_share", "attn MACs %"),
    ("top1", "top-1 %"),
    ("top5", "top-5 %"),
    ("images_per_s", "train img/s"),
]
PAPER_COLUMNS = [
    ("paper_top1_err", "paper top-1 err"),
    ("paper_top5_err", "paper top-5 err"),
    ("paper_gmacs", "paper GFLOPs(=GMACs)"),
]
# tools/compare.py --paper: the attention blocks' own cost, ours beside what the papers state.
PAPER_COST_COLUMNS = [
    ("attention_params", "attn params"),
    ("paper_extra_params", "paper attn params"),
    ("attention_gmacs", "attn GMACs"),
    ("paper_extra_gmacs", "paper attn GFLOPs"),
    ("paper_params_m", "paper params"),
]
# The paper's shape (Tables 2 and 10-16): error rates as mean ± std over seeds, size, cost and speed.
ERROR_COLUMNS = [
    ("name", "name"),
    ("arch", "arch"),
    ("reduction", "r"),
    ("params", "params"),
    ("gmacs", "GMACs"),
    ("top1_err", "top-1 err %"),
    ("top5_err", "top-5 err %"),
    ("runs", "seeds"),
    ("images_per_s", "train img/s"),
]
_WITH_STD = ("top1", "top5", "top1_err", "top5_err")  # cells shown as mean ± std


def _cell(row: dict, key: str) -> str:
    if key == R_OR_K:
        return _reduction_cell(row)
    v = row.get(key)
    if v is None:
        return "-"
    if key in _WITH_STD:
        std = row.get(key + "_std")
        return f"{v:.2f} ± {std:.2f}" if row.get("runs", 0) > 1 else f"{v:.2f}"
    if key in ("se_params_share", "se_gmacs_share"):
        return f"{100 * v:.2f}"
    if key in ("params", "params_total", "attention_params", "paper_extra_params"):
        return f"{v:,}"
    if key == "paper_params_m":
        return f"{v:g}M"
    if key in ("gmacs", "gflops"):
        return f"{v:.3f}"
    if key in ("paper_gmacs", "paper_extra_gmacs", "attention_gmacs"):
        return f"{v:.4g}"  # as the papers print them: 3.86, 3.864, 4.7e-4
    if key == "images_per_s":
        return f"{v:.1f}"
    return str(v)


def _reduction_cell(row: dict) -> str:
    """r for SE and CBAM, "k 5,5,5,7" (per stage) for ECA, "-" for a plain network."""
    if row.get("reduction") is not None:
        return str(row["reduction"])
    k = row.get("kernel_sizes")
    return "k " + ",".join(map(str, k)) if k else "-"


def format_rows(rows: list[dict], fmt: str = "table", columns: list[tuple[str, str]] | None = None) -> str:
    """Render rows as an aligned text table, Markdown, CSV or JSON.

    `columns` is a list of (key, title); by default COLUMNS, plus PAPER_COST_COLUMNS and PAPER_COLUMNS
    (last, as README shows them) when the rows have them (tools/compare.py --paper). The papers'
    sources follow the table.
    """
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cols = columns or COLUMNS + (PAPER_COST_COLUMNS + PAPER_COLUMNS if rows and "paper_source" in rows[0] else [])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        keys = ["reduction" if k == R_OR_K else k for k, _ in cols]
        keys += [k + "_std" for k in keys if k in _WITH_STD] + ([] if "runs" in keys else ["runs"])
        keys += [k for k in ("kernel_sizes", "paper_source") if rows and k in rows[0] and k not in keys]
        writer.writerow(keys)
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
        return buf.getvalue()
    header = [title for _, title in cols]
    body = [[_cell(row, k) for k, _ in cols] for row in rows]
    # Runs without an accuracy, or with a partial one, get a numbered footnote on the accuracy cell.
    keys = [k for k, _ in cols]
    marked = next((keys.index(k) for k in ("top1", "top1_err") if k in keys), 0)
    footnotes = []
    for row, cells in zip(rows, body):
        if row.get("notes"):
            footnotes.append(f"[{len(footnotes) + 1}] " + "; ".join(row["notes"]))
            cells[marked] += f" [{len(footnotes)}]"
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    else:
        widths = [max(len(x) for x in col) for col in zip(header, *body)]
        fmt_line = "  ".join(f"{{:<{w}}}" for w in widths)
        table = "\n".join(
            [fmt_line.format(*header), fmt_line.format(*("-" * w for w in widths))]
            + [fmt_line.format(*r) for r in body]
        )
    sources = [f"paper figures for {row['name']}: {row['paper_source']}" for row in rows if row.get("paper_source")]
    return "\n".join([table, *([""] + footnotes if footnotes else []), *([""] + sources if sources else [])])
