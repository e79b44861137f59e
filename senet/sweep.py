"""Sweeps: configs x seeds, one training run each, resumable; then one table in the paper's shape.

Each run is `tools/train.py -c CONFIG -o <overrides> train.seed=S output_dir=<sweep>/<name>/seed<S>`
in its own process (optionally under `paddle.distributed.launch`), one after another, so a crash or
a leak in one run cannot touch the next. Rerunning the same sweep skips the runs whose metrics.json
says "finished" and restarts the others with `--resume auto`, but only runs whose recorded config.yaml
is the planned recipe: a sweep re-run with another recipe (other epochs, lr, data) into the same
folder is refused with the runs and settings that differ, so that a table never mixes recipes.

The table follows Hu et al.'s tables (Table 2; the ablations of Sections 6 and 7.1): top-1 / top-5
*error* on the val split, here as mean ± sample std over seeds, with the attention block by name
(SE, ECA, CBAM, from senet.attention's registry; "-" for a plain net) and its reduction ratio where
it has one, parameters, multiply-adds and measured training images/s. The paper's figures stand
beside a row only when the config is exactly a paper's setup (senet.compare.paper_reference); the
papers report single runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from senet.compare import ERROR_COLUMNS, PAPER_COLUMNS, build_rows, error_rows, format_rows, paper_reference
from senet.config import ConfigError, config_changes, load_config, parse_overrides
from senet.runtime import cpu_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESERVED = ("train.seed", "output_dir", "name")  # set per run by the sweep; an override would collide
# Settings a reused run may have had otherwise: where it ran and how it logged, nothing that changes what
# was trained (train.epochs, which resume allows to change, is part of the recipe here).
BOOKKEEPING = (
    "name",
    "output_dir",
    "data.num_workers",
    "train.threads",
    "train.log_every",
    "train.save_every",
    "train.save_every_steps",
    "train.keep_last",
    "train.log_se_every",
    "train.eval_every",
)
# Signals the sweep passes on to its running trainers (which save and exit 130, 143 or 138), then stops
# with 128 + the signal's number. SIGHUP (an ssh session dropped) goes on as SIGTERM: a trainer saves on it.
FORWARDED = {
    signal.SIGINT: signal.SIGINT,
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGUSR1: signal.SIGUSR1,
    signal.SIGHUP: signal.SIGTERM,
}


@dataclass(frozen=True)
class Run:
    config: str  # YAML path
    name: str  # the config's resolved name: one folder per config
    seed: int
    output_dir: str


def _leaf_keys(d: dict, prefix: str = "") -> list[str]:
    return [
        key for k, v in d.items() for key in (_leaf_keys(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k])
    ]


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
            raise ConfigError(
                f"{path} and {seen[name]} both have the name '{name}': their runs would share "
                f"a folder. Give the configs distinct file names or `name:` keys"
            )
        seen[name] = path
        runs += [Run(path, name, s, os.path.join(sweep_dir, name, f"seed{s}")) for s in seeds]
    return runs


def status(output_dir: str) -> str:
    """ "finished" (metrics.json says so), "unfinished" (the run started) or "new"."""
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


def recipe_differences(run: Run, overrides: list[str]) -> list[str]:
    """How an existing run's recorded config.yaml differs from the planned recipe ("key old -> new"
    lines, bookkeeping excepted); [] for a new run or the same recipe."""
    recorded = os.path.join(run.output_dir, "config.yaml")
    if not os.path.isfile(recorded):
        return []
    try:
        old = load_config(recorded)
    except ConfigError as e:
        return [f"its config.yaml cannot be read ({e})"]
    planned = load_config(run.config, overrides + [f"train.seed={run.seed}", f"output_dir={run.output_dir}"])
    harmless, different = config_changes(old, planned)
    return [line for line in harmless + different if not any(line.startswith((k + " ", k + ".")) for k in BOOKKEEPING)]


def check_recipes(runs: list[Run], overrides: list[str]) -> None:
    """Refuse a sweep whose folder holds runs of another recipe (ConfigError naming them and what differs)."""
    other = {run: d for run in runs if (d := recipe_differences(run, overrides))}
    if other:
        lines = [f"{run.output_dir}: {'; '.join(d[:3])}{' ...' if len(d) > 3 else ''}" for run, d in other.items()]
        raise ConfigError(
            f"{len(other)} run(s) in this sweep folder were trained with another recipe, and a table "
            "must not mix recipes:\n  " + "\n  ".join(lines) + "\nUse another --out folder, or remove "
            "those run folders to train them again with this recipe."
        )


def train_command(
    run: Run,
    overrides: list[str],
    resume: bool,
    nproc: int = 0,
    devices: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The tools/train.py command line of one run, under paddle.distributed.launch if nproc or devices."""
    cmd = [python]
    if nproc or devices:
        cmd += ["-m", "paddle.distributed.launch", "--log_dir", os.path.join(run.output_dir, "launch_logs")]
        cmd += ["--nproc_per_node", str(nproc)] if nproc else []
        cmd += ["--devices", devices] if devices else []
    cmd += [
        os.path.join(ROOT, "tools", "train.py"),
        "-c",
        run.config,
        "-o",
        *overrides,
        f"train.seed={run.seed}",
        f"output_dir={run.output_dir}",
    ]
    return cmd + (["--resume", "auto"] if resume else [])


def run_sweep(
    runs: list[Run],
    overrides: list[str],
    nproc: int = 0,
    devices: str | None = None,
    python: str = sys.executable,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train every run that is not finished, in order, `jobs` at a time. Returns the runs by outcome:
    skipped (finished before), done, failed, and interrupted (a signal stopped the sweep; then "signal"
    holds its number).

    With jobs > 1 each run gets train.threads = cores // jobs and writes its console output to
    <run>/console.log (its train.log is there anyway). On a CPU two one-thread runs side by side
    train about 1.4x the images per second of one two-thread run: Paddle's second thread speeds a
    small net's step up by less than its share. SIGINT/SIGTERM are passed on to every running child,
    and the sweep waits for each to save its checkpoint and exit (a bare subprocess.run would kill a
    child 0.25 s after Ctrl-C, in the middle of writing its checkpoint). SIGUSR1 and SIGHUP too (FORWARDED):
    a sweep that dies of a signal would leave its trainer running, orphaned, holding its run's lock.
    """
    outcome: dict[str, list[Run]] = {"skipped": [], "done": [], "failed": [], "interrupted": []}
    todo = []
    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.name} seed {run.seed}"
        if status(run.output_dir) == "finished":
            log(f"{where}: finished before, skipped ({run.output_dir})")
            outcome["skipped"].append(run)
        else:
            todo.append((where, run))
    threads = [f"train.threads={max(1, cpu_count() // jobs)}"] if jobs > 1 else []
    running: list[tuple[str, Run, subprocess.Popen, Any]] = []
    got: dict[str, int] = {}

    def forward(signum: int, frame: Any) -> None:
        got["signal"] = signum
        for _, _, proc, _ in running:
            proc.send_signal(FORWARDED[signum])  # a terminal Ctrl-C reaches the children too; a second is harmless

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while todo or running:
            while todo and len(running) < jobs and "signal" not in got:
                where, run = todo.pop(0)
                state = status(run.output_dir)
                log(f"{where}: {'resuming' if state == 'unfinished' else 'starting'} in {run.output_dir}")
                console = None
                if jobs > 1:
                    os.makedirs(run.output_dir, exist_ok=True)
                    console = open(os.path.join(run.output_dir, "console.log"), "a")
                # in our working directory: relative configs, data.root and --out mean the same
                cmd = train_command(run, overrides + threads, state == "unfinished", nproc, devices, python)
                proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT if console else None)
                running.append((where, run, proc, console))
            if not running:
                break  # a signal came before the next run started
            time.sleep(0.2)
            for item in [r for r in running if r[2].poll() is not None]:
                running.remove(item)
                where, run, proc, console = item
                if console is not None:
                    console.close()
                if "signal" in got:
                    outcome["interrupted"].append(run)
                elif proc.returncode != 0 or status(run.output_dir) != "finished":
                    log(
                        f"{where}: FAILED (exit code {proc.returncode}); see "
                        f"{os.path.join(run.output_dir, 'train.log')}"
                    )
                    outcome["failed"].append(run)
                else:
                    outcome["done"].append(run)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "signal" in got:
        outcome["interrupted"] += [run for _, run in todo]
        outcome["signal"] = got["signal"]
        log(f"stopped by {signal.Signals(got['signal']).name}; rerun the same command to resume the sweep")
    return outcome


def sweep_rows(runs: list[Run], overrides: list[str]) -> list[dict[str, Any]]:
    """One row per config: error mean ± std over its finished runs, counts, speed and the paper's figures."""
    configs = list(dict.fromkeys(r.config for r in runs))
    finished = [r.output_dir for r in runs if status(r.output_dir) == "finished"]
    rows = error_rows(build_rows(configs, overrides, finished))
    cfgs = {c["name"]: c for c in (load_config(path, overrides) for path in configs)}
    for row in rows:
        row.update(block_columns(cfgs[row["name"]]))
        ref = paper_reference(cfgs[row["name"]])
        row["paper_top1_err"], row["paper_top5_err"], row["paper_gmacs"] = ref or (None, None, None)
        row["seeds_planned"] = sum(r.name == row["name"] for r in runs)
    return rows


def block_columns(cfg: dict) -> dict[str, Any]:
    """The config's attention block by its registry title ("SE", "ECA", "CBAM"; None for a plain net)
    and the block's reduction ratio r, None for a block without one (ECA)."""
    from senet.attention import split_arch

    entry, _ = split_arch(cfg["model"]["arch"])
    if entry is None:
        return {"block": None, "reduction": None}
    return {"block": entry.title, "reduction": (cfg["model"].get(entry.name) or {}).get("reduction")}


def write_table(rows: list[dict[str, Any]], sweep_dir: str) -> dict[str, str]:
    """results.md, results.csv and results.json in the sweep folder; returns the Markdown table."""
    from senet.checkpoint import atomic_write

    os.makedirs(sweep_dir, exist_ok=True)
    after_arch = [k for k, _ in ERROR_COLUMNS].index("arch") + 1
    cols = ERROR_COLUMNS[:after_arch] + [("block", "block")] + ERROR_COLUMNS[after_arch:] + PAPER_COLUMNS
    out = {
        "md": format_rows(rows, "md", cols) + "\n\n" + TABLE_NOTE + "\n",
        "csv": format_rows(rows, "csv", cols),
        "json": format_rows(rows, "json"),
    }
    for ext, text in out.items():  # atomic: a full disk leaves the previous table, never an empty one
        atomic_write(os.path.join(sweep_dir, f"results.{ext}"), text.encode())
    return out


TABLE_NOTE = (
    "Error = 100 - accuracy (%) on the val split, best epoch of each run, mean ± sample std over the "
    "finished seeds. GMACs are multiply-adds for one image at data.eval_crop (the paper's 'GFLOPs'). "
    "r is the block's reduction ratio (ECA has none). Paper figures (single runs; Hu et al., Table 2 for SE) "
    "appear only for configs with exactly a paper's setup."
)
