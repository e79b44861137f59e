"""Sweeps: configs x seeds, one training run each, resumable; then one table in the paper's shape.

Each run is `tools/train.py -c CONFIG -o <overrides> train.seed=S output_dir=<sweep>/<name>/seed<S>`
in its own process (optionally under `paddle.distributed.launch`), one after another, so a crash or
a leak in one run cannot touch the next. Rerunning the same sweep skips the runs whose metrics.json
says "finished" and restarts the others with `--resume auto`.

The table follows Hu et al.'s tables (Table 2; the ablations of Sections 6 and 7.1): top-1 / top-5
*error* on the val split, here as mean ± sample std over seeds, with parameters, multiply-adds and
measured training images/s. The paper's figures stand beside a row only when the config is exactly
a Table 2 setup (senet.compare.paper_reference); the paper reports single runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from senet.config import ConfigError, load_config, parse_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESERVED = ("train.seed", "output_dir", "name")  # set per run by the sweep; an override would collide


@dataclass(frozen=True)
class Run:
    config: str  # YAML path
    name: str  # the config's resolved name: one folder per config
    seed: int
    output_dir: str


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    return [key for k, v in d.items()
            for key in (_leaf_keys(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k])]


def plan(configs: list[str], seeds: list[int], sweep_dir: str, overrides: list[str]) -> list[Run]:
    """Every (config, seed) run, config-major. Loads each config first, so a bad one fails before training."""
    clash = [k for k in RESERVED if k in _leaf_keys(parse_overrides(overrides))]
    if clash:
        raise ConfigError(f"the sweep sets {', '.join(clash)} itself for every run; remove it from -o")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"give one or more distinct seeds, got {seeds}")
    runs, seen = [], {}
    for path in configs:
        name = load_config(path, overrides)["name"]
        if name in seen:
            raise ConfigError(f"{path} and {seen[name]} both have the name '{name}': their runs would share "
                              f"a folder. Give the configs distinct file names or `name:` keys")
        seen[name] = path
        runs += [Run(path, name, s, os.path.join(sweep_dir, name, f"seed{s}")) for s in seeds]
    return runs


def status(output_dir: str) -> str:
    """"finished" (metrics.json says so), "unfinished" (the run started) or "new"."""
    metrics = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics):
        try:
            with open(metrics) as f:
                if json.load(f).get("finished") is True:
                    return "finished"
        except (OSError, ValueError):
            pass  # unreadable: treat the run as unfinished and let --resume auto sort it out
    started = any(os.path.exists(os.path.join(output_dir, p)) for p in ("metrics.json", "config.yaml", "checkpoints"))
    return "unfinished" if started else "new"


def train_command(run: Run, overrides: list[str], resume: bool, nproc: int = 0, devices: str | None = None,
                  python: str = sys.executable) -> list[str]:
    """The tools/train.py command line of one run, under paddle.distributed.launch if nproc or devices."""
    cmd = [python]
    if nproc or devices:
        cmd += ["-m", "paddle.distributed.launch", "--log_dir", os.path.join(run.output_dir, "launch_logs")]
        cmd += ["--nproc_per_node", str(nproc)] if nproc else []
        cmd += ["--devices", devices] if devices else []
    cmd += [os.path.join(ROOT, "tools", "train.py"), "-c", run.config,
            "-o", *overrides, f"train.seed={run.seed}", f"output_dir={run.output_dir}"]
    return cmd + (["--resume", "auto"] if resume else [])


def _run_child(cmd: list[str]) -> tuple[int, int | None]:
    """Run `cmd`, passing SIGINT/SIGTERM on to it and waiting for it to save and exit.

    Returns (exit code, the signal that arrived or None). A bare subprocess.run would kill the child
    0.25 s after Ctrl-C, in the middle of writing its checkpoint.
    """
    got: dict[str, int] = {}
    proc = subprocess.Popen(cmd)  # in our working directory: relative configs, data.root and --out mean the same

    def forward(signum: int, frame: Any) -> None:
        got["signal"] = signum
        proc.send_signal(signum)  # a terminal Ctrl-C reaches the child too; a second notice is harmless

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return rc, got.get("signal")


def run_sweep(runs: list[Run], overrides: list[str], nproc: int = 0, devices: str | None = None,
              python: str = sys.executable, log: Callable[[str], None] = print) -> dict[str, list[Run]]:
    """Train every run that is not finished, in order. Returns the runs by outcome:
    skipped (finished before), done, failed, and interrupted (a signal stopped the sweep)."""
    outcome: dict[str, list[Run]] = {"skipped": [], "done": [], "failed": [], "interrupted": []}
    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.name} seed {run.seed}"
        state = status(run.output_dir)
        if state == "finished":
            log(f"{where}: finished before, skipped ({run.output_dir})")
            outcome["skipped"].append(run)
            continue
        log(f"{where}: {'resuming' if state == 'unfinished' else 'starting'} in {run.output_dir}")
        rc, sig = _run_child(train_command(run, overrides, state == "unfinished", nproc, devices, python))
        if sig is not None:
            log(f"{where}: stopped by {signal.Signals(sig).name}; rerun the same command to resume the sweep")
            outcome["interrupted"] = runs[i - 1:]
            break
        if rc != 0 or status(run.output_dir) != "finished":
            log(f"{where}: FAILED (exit code {rc}); see {os.path.join(run.output_dir, 'train.log')}")
            outcome["failed"].append(run)
        else:
            outcome["done"].append(run)
    return outcome


def sweep_rows(runs: list[Run], overrides: list[str]) -> list[dict[str, Any]]:
    """One row per config: error mean ± std over its finished runs, counts, speed and the paper's figures."""
    from senet.compare import build_rows, error_rows, paper_reference

    configs = list(dict.fromkeys(r.config for r in runs))
    finished = [r.output_dir for r in runs if status(r.output_dir) == "finished"]
    rows = error_rows(build_rows(configs, overrides, finished))
    cfgs = {c["name"]: c for c in (load_config(path, overrides) for path in configs)}
    for row in rows:
        ref = paper_reference(cfgs[row["name"]])
        row["paper_top1_err"], row["paper_top5_err"], row["paper_gmacs"] = ref or (None, None, None)
        row["seeds_planned"] = sum(r.name == row["name"] for r in runs)
    return rows


def write_table(rows: list[dict[str, Any]], sweep_dir: str) -> dict[str, str]:
    """results.md, results.csv and results.json in the sweep folder; returns the Markdown table."""
    from senet.compare import ERROR_COLUMNS, PAPER_COLUMNS, format_rows

    os.makedirs(sweep_dir, exist_ok=True)
    cols = ERROR_COLUMNS + PAPER_COLUMNS
    out = {"md": format_rows(rows, "md", cols) + "\n\n" + TABLE_NOTE + "\n",
           "csv": format_rows(rows, "csv", cols), "json": format_rows(rows, "json")}
    for ext, text in out.items():
        with open(os.path.join(sweep_dir, f"results.{ext}"), "w") as f:
            f.write(text)
    return out


TABLE_NOTE = ("Error = 100 - accuracy (%) on the val split, best epoch of each run, mean ± sample std over the "
              "finished seeds. GMACs are multiply-adds for one image at data.eval_crop (the paper's 'GFLOPs'). "
              "Paper figures (Hu et al., Table 2; single runs) appear only for configs with exactly the paper's setup.")
