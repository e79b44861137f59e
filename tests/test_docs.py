"""The commands that README.md, docs/*.md, configs/ablation/README.md and the tools' --help print are real.

Every shell command in their code blocks (and every command-like inline code span) is parsed: the
tool or script must exist, each flag must be one that tool's argparse knows (read from its real
--help), each config file must exist and load with the command's -o overrides, and each repo path
must exist. Paths under output/ must be a config's run folder or a file that the tools really write
there: a tiny run is trained, exported, evaluated and analysed with the tools' default paths, and
the documented names are looked up in it. So renaming a tool, a flag, a config or an output file
breaks this test rather than the user. The README's compare command is run as written and its
printed rows are checked against the README's.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from senet.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
    "README.md",
    *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))),
    "configs/ablation/README.md",
]
TOOLS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tools", "*.py")))
SCRIPTS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")))
PYTHON = ".venv/bin/python"  # the one way the docs call Python
REPO_DIRS = ("configs/", "tools/", "scripts/", "senet/", "tests/", "docs/", ".ci/")
CREATED_BY_FLAG = {"--out", "--output", "--log_dir"}  # their values are folders the command creates
TINY = [
    "model.num_classes=4",
    "data.name=synthetic",
    "data.image_size=16",
    "data.eval_crop=16",
    "data.synthetic_train_size=32",
    "data.synthetic_val_size=16",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.epochs=1",
    "train.log_every=1",
    "train.amp.enabled=false",
]
DEMO = "configs/demo/se_resnet20_digits.yaml"

POOL = ThreadPoolExecutor(4)  # the --help runs and the tiny run's tools start at import and overlap


def run(*cmd: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=300)


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


# ---------------------------------------------------------------- reading the docs


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def inline_spans(text: str) -> list[str]:
    """Inline code outside fenced blocks, a line break inside one read as a space."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [s.replace("\n", " ") for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def shell_lines(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def looks_like_command(text: str) -> bool:
    return bool(
        re.match(
            r"(\.venv/bin/python|/\S*/python3?|python3?|make|scripts/\S+\.sh|tools/\S+\.py|"
            r"scripts/\S+\.py)( |$)",
            text,
        )
    )


def doc_commands(path: str) -> list[str]:
    """Every command of a doc: shell blocks, command lines of plain blocks, command-like inline code
    (which may be a synopsis such as `tools/x.py -c CFG [--flag N]`)."""
    text = read(path)
    out = []
    for lang, body in code_blocks(text):
        if lang in ("bash", "sh", ""):
            out += [c for c in shell_lines(body) if lang or looks_like_command(c)]
    return out + [s for s in inline_spans(text) if looks_like_command(s)]


def help_examples(help_text: str) -> list[str]:
    """The example commands of a --help text: its description's lines that start like a command."""
    desc = help_text.split("\noptions:")[0].split("\n", 1)[-1]  # not the usage line
    return [c for c in shell_lines(desc) if looks_like_command(c)]


# ---------------------------------------------------------------- what the tools know


@functools.cache
def _help_future(script: str):
    if script == "-m paddle.distributed.launch":
        return POOL.submit(run, sys.executable, "-m", "paddle.distributed.launch", "--help")
    return POOL.submit(run, sys.executable, script, "--help")


for _s in TOOLS + ["-m paddle.distributed.launch"]:  # start them all now, in the background
    _help_future(_s)


def help_text(script: str) -> str:
    proc = _help_future(script).result()
    assert proc.returncode == 0, f"{script} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def options(script: str) -> set[str]:
    """A tool's options, from its real --help. A script's, from its add_argument calls: some scripts import
    Paddle (seconds) or a package outside the venv (scripts/make_weight_fixtures.py: torch) before parsing."""
    if script.startswith("scripts/"):
        calls = re.findall(r"add_argument\(((?:\s*\"-[^\"]+\",)+)", read(script))
        return {"-h", "--help"} | {flag for call in calls for flag in re.findall(r'"(-[^"]+)"', call)}
    text = help_text(script)
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text[text.index("options:") :]))


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", read("Makefile"), flags=re.M))


@functools.cache
def run_folders() -> set[str]:
    """The output_dir of every config in configs/: where `tools/train.py -c CONFIG` puts its run."""
    folders = set()
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
        if "_base_" not in path:
            folders.add(os.path.normpath(load_config(path)["output_dir"]))
    return folders


def is_placeholder(token: str) -> bool:
    """CONFIG, RUN_DIR/config.yaml, GROUP_*.yaml, <output_dir>/vdl, key=value, ...: stand for what the user gives.
    README is a file name, not a placeholder: configs/ablation/README.md is checked like any path, so a
    wrong one fails (an existing path is never a placeholder either)."""
    if token and os.path.exists(os.path.join(ROOT, token.split("::")[0])):
        return False
    return bool(
        re.fullmatch(r"\.\.\.\]?|key=value|KEY=VALUE", token)
        or re.search(r"\b(?!README\b)[A-Z][A-Z_]+[0-9]?\b", token)
        or any(c in token for c in "<…")
        or "..." in token
    )


# ---------------------------------------------------------------- the tiny run: what the tools write


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A run trained and then read by export, analyze_gates and eval --json with their default paths.

    Returns the folder and the set of relative paths in it: the names documented under a run
    folder must be among them.
    """
    tmp = tmp_path_factory.mktemp("docs")
    folder = tmp / "run"
    fake = POOL.submit(run, sys.executable, "scripts/make_fake_data.py", "--out", str(tmp / "fake"), "--no-cifar")
    common = ["-c", DEMO, "-o", *TINY, f"output_dir={folder}"]
    proc = run(sys.executable, "tools/train.py", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [
        POOL.submit(run, sys.executable, "tools/export.py", *common, f"model.weights={folder}"),
        POOL.submit(
            run,
            sys.executable,
            "tools/analyze_gates.py",
            *common,
            f"model.weights={folder}",
            "--samples",
            "8",
            "--per-class",
            "2",
        ),
        POOL.submit(run, sys.executable, "tools/eval.py", *common, f"model.weights={folder}", "--json"),
    ]
    for job in jobs:
        proc = job.result()
        assert proc.returncode == 0, proc.args[:3] + [proc.stderr[-3000:]]
    assert fake.result().returncode == 0, fake.result().stderr[-2000:]
    names = set()
    for d, dirs, files in os.walk(folder):
        names |= {os.path.relpath(os.path.join(d, n), folder) for n in dirs + files}
    fake_names = set()
    for d, dirs, files in os.walk(tmp / "fake"):
        fake_names |= {os.path.relpath(os.path.join(d, n), tmp / "fake") for n in dirs + files}
    return folder, names, fake_names


def test_export_analyze_and_eval_write_into_the_run_folder_by_default(written):
    folder, names, _ = written
    assert {
        "export/model.json",
        "export/model.pdiparams",
        "export/model.onnx",
        "export/model.safetensors",
        "export/inference.yml",
    } <= names
    assert {"se_analysis/summary.txt", "se_analysis/se_stats.json", "se_analysis/fig7_depth_distribution.png"} <= names
    assert "eval.json" in names and "model.safetensors" in names and "checkpoints/last.pdparams" in names
    assert json.loads((folder / "eval.json").read_text())["source"]["weights"] == str(folder / "model.safetensors")


def test_demo_configs_name_the_folders_make_demo_writes():
    assert re.search(r"^DEMO_OUT := output/demo$", read("Makefile"), flags=re.M)
    assert "OUT=${DEMO_OUT:-output/demo}" in read("scripts/demo.sh")
    for path in glob.glob(os.path.join(ROOT, "configs", "demo", "*.yaml")):
        stem = os.path.splitext(os.path.basename(path))[0]
        assert load_config(path)["output_dir"] == f"output/demo/{stem}"


# ---------------------------------------------------------------- checking one command


class Checker:
    def __init__(self, written):
        self.folder, self.names, self.fake_names = written
        self.problems: list[str] = []
        self.checked = 0  # commands really checked: a case that checked none must fail, not pass

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def path(self, token: str, where: str) -> None:
        """A repo path must exist; output/... must be a run folder or a file the tools write into one."""
        token = token.split("::")[0].rstrip("/,.;:)")
        if is_placeholder(token) or not token:
            return
        if token.startswith(REPO_DIRS):
            if not glob.glob(os.path.join(ROOT, token)):
                self.problem(where, f"{token} does not exist")
        elif token.startswith("output/") and "*" in token:  # output/demo/*: a folder that holds runs
            parent = os.path.normpath(token.split("*")[0])
            if not any(r.startswith(parent + os.sep) for r in run_folders()):
                self.problem(where, f"{token}: no config's output_dir is under {parent}")
        elif token.startswith("output/"):
            norm = os.path.normpath(token)
            runs = [r for r in run_folders() if norm == r or norm.startswith(r + os.sep)]
            if not runs:
                self.problem(where, f"{token}: no config's output_dir is this folder or holds it")
            elif norm != runs[0] and os.path.relpath(norm, runs[0]) not in self.names:
                self.problem(where, f"{token}: the tools write no {os.path.relpath(norm, runs[0])} into a run folder")
        elif token.startswith("data/fake/"):
            if token[len("data/fake/") :] not in self.fake_names:
                self.problem(where, f"{token}: scripts/make_fake_data.py writes no such file")

    def configs(self, tokens: list[str], where: str, archs_ok: bool) -> list[str]:
        from senet.resnet import all_archs

        found = []
        for t in tokens:
            if is_placeholder(t):
                continue
            if archs_ok and "/" not in t and not t.endswith(".yaml"):
                if t not in all_archs():
                    self.problem(where, f"{t} is neither a config file nor an architecture")
                continue
            matches = sorted(glob.glob(os.path.join(ROOT, t)))
            if not matches:
                self.problem(where, f"config {t} does not exist")
            found += matches
        return found

    def overrides(self, tokens: list[str], configs: list[str], where: str) -> None:
        items = []
        for t in tokens:
            if is_placeholder(t) or is_placeholder(t.split("=")[0]):
                continue
            if "=" not in t:
                self.problem(where, f"override {t} has no '='")
                continue
            key, value = t.split("=", 1)
            if key in ("output_dir", "data.root"):
                continue  # a folder the run creates, or the user's dataset
            if key == "model.weights":
                self.path(value, where)
                continue
            self.path(value, where)
            items.append(t)
        for cfg in configs or [None]:
            try:
                load_config(cfg, items)
            except ConfigError as e:
                self.problem(where, f"{os.path.relpath(cfg, ROOT) if cfg else 'overrides'}: {e}")

    def script(self, script: str, args: list[str], where: str) -> None:
        if not os.path.isfile(os.path.join(ROOT, script)):
            self.problem(where, f"{script} does not exist")
            return
        known = options(script)
        groups: list[tuple[str, list[str]]] = [("", [])]  # (flag, its values)
        for raw in args:
            t = raw.strip("[]|")
            if re.match(r"--?[A-Za-z]", t):
                flag = t.split("=")[0]
                if flag not in known:
                    self.problem(where, f"{script} has no option {flag}")
                groups.append((flag, []))
            elif t:
                groups[-1][1].append(t)
        configs: list[str] = []
        for flag, values in groups:
            if flag in ("-c", "--config"):
                configs += self.configs(values, where, archs_ok=script == "tools/bench.py")
        for flag, values in groups:
            if flag in ("-o", "--override"):
                self.overrides(values, configs, where)
            elif flag not in CREATED_BY_FLAG | {"-c", "--config"}:
                for v in values:
                    if "/" in v:
                        self.path(v, where)

    def command(self, line: str, where: str) -> None:
        where = f"{where}: `{line}`"
        try:
            tokens = shlex.split(line.replace("|", " | ") if "[" in line else line, comments=True)
        except ValueError as e:
            self.problem(where, f"cannot parse: {e}")
            return
        head = tokens[0]
        if head == PYTHON and len(tokens) == 1:
            return  # the name alone, in prose
        self.checked += 1
        if re.fullmatch(r"/\S*/python3?", head) and len(tokens) > 1 and tokens[1].endswith(".py"):
            # another environment's interpreter (scripts/make_weight_fixtures.py runs in a torch venv)
            self.script(tokens[1], tokens[2:], where)
            return
        if head in ("python", "python3"):
            self.problem(where, f"call Python as {PYTHON}, as everywhere else in the docs")
        elif head == "make":
            for t in tokens[1:]:
                if "=" not in t and t not in make_targets():
                    self.problem(where, f"the Makefile has no target {t}")
        elif head == PYTHON and tokens[1:3] == ["-m", "paddle.distributed.launch"]:
            launch = options("-m paddle.distributed.launch")
            rest = tokens[3:]
            i = next(i for i, t in enumerate(rest) if t.endswith(".py"))
            for t in rest[:i]:
                if t.startswith("--") and t not in launch:
                    self.problem(where, f"paddle.distributed.launch has no option {t}")
            self.script(rest[i], rest[i + 1 :], where)
        elif head == PYTHON:
            self.script(tokens[1], tokens[2:], where)
        elif head == "scripts/train_dist.sh":
            self.path(head, where)
            self.configs(tokens[2:3], where, archs_ok=False)
            self.script("tools/train.py", ["-c", *tokens[2:]], where)
        elif head == "scripts/sweep.sh":
            self.path(head, where)
            if len(tokens) > 1:
                group = os.path.join(ROOT, "configs", "ablation", tokens[1] + "_*.yaml")
                if not is_placeholder(tokens[1]) and tokens[1] != "digits" and not glob.glob(group):
                    self.problem(where, f"no ablation group {tokens[1]}")
                self.script("tools/sweep.py", tokens[2:], where)
        elif head.startswith("scripts/") and head.endswith(".sh"):
            self.path(head, where)
        elif head == "sbatch" and len(tokens) > 3:  # scripts/slurm_requeue.sbatch CONFIG OUTPUT_DIR [train.py args]
            self.path(tokens[1], where)
            self.script("tools/train.py", ["-c", tokens[2], *tokens[4:]], where)
        elif head.endswith(".py"):  # a tool named in prose: `tools/x.py --flag`
            self.script(head, tokens[1:], where)
        else:
            self.problem(where, f"unknown kind of command {head}")


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_docs_names_real_tools_flags_configs_and_paths(doc, written):
    commands = doc_commands(doc)
    assert commands, f"{doc} shows no command"
    check = Checker(written)
    for line in commands:
        check.command(line, doc)
    assert check.checked > 0, f"{doc}: none of its {len(commands)} commands was checked"
    for span in inline_spans(read(doc)):  # inline paths such as `senet/profile.py` or `tests/x.py::test_y`
        if span.startswith(REPO_DIRS) and " " not in span:
            check.path(span, doc)
            name = span.split("::")[1] if "::" in span else None
            if name and not is_placeholder(name) and f"def {name}" not in read(span.split("::")[0]):
                check.problem(doc, f"{span}: no such test")
    assert not check.problems, "\n".join(check.problems)


@pytest.mark.parametrize("script", TOOLS + SCRIPTS)
def test_every_help_example_is_a_real_command(script, written):
    if script.startswith("tools/"):
        examples = help_examples(help_text(script))
        assert examples, f"{script} --help shows no example"
    else:  # scripts' --help shows only the first line of their docstring: read the examples there
        doc = ast.get_docstring(ast.parse(read(script))) or ""
        examples = [c for c in shell_lines(doc) if looks_like_command(c)]
    check = Checker(written)
    for line in examples:
        check.command(line, f"{script} --help")
    assert not check.problems, "\n".join(check.problems)
    assert check.checked == len(examples) > 0, f"{script}: {check.checked} of {len(examples)} examples checked"


def test_the_readme_compare_command_prints_the_readme_rows():
    readme = read("README.md")
    line = next(c for c in doc_commands("README.md") if c.startswith(f"{PYTHON} tools/compare.py"))
    proc = run(*shlex.split(line.replace(PYTHON, sys.executable, 1)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = next(b for lang, b in code_blocks(readme) if b.startswith("name ") and "se_resnet50" in b)
    printed = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln.strip()}
    for row in shown.splitlines()[1:]:
        head, _, tail = row.partition("...")
        cells = printed[head.split()[0]]
        assert cells[: len(head.split())] == head.split(), (row, cells)
        assert cells[len(cells) - len(tail.split()) :] == tail.split(), (row, cells)


def test_python_snippets_import_what_exists():
    for doc in DOCS:
        for lang, body in code_blocks(read(doc)):
            if lang != "python":
                continue
            tree = ast.parse(body)  # a syntax error fails here
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{doc}: {node.module} has no {alias.name}"


# A ratio in prose: x1.042, 1.65x, or 0.991 (a share of a reference, written without the x).
FIGURE = re.compile(r"(?<![\w.])(?:x(\d\.\d{2,4})|(\d+\.\d+)x(?![\w])|(0\.9\d\d))(?![\d])")
# "<!-- from docs/bench.md: ROW | COLUMN; ROW | COLUMN -->": the table cells of the figures before it, ROW
# the start of the row's first cell, COLUMN the start of its column's header.
SOURCE = re.compile(r"<!-- from (\S+): (.*?) -->", re.S)
# The paper's figures (Hu et al., Sec. 4: x1.10 training on GPUs, x1.02 CPU inference) and the targets.
PAPER_AND_TARGETS = {"1.10", "1.02", "1.05", "1.03", "0.98"}


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, row cells) of every table of a markdown text, cells stripped of markup."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if (
            line.startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1])
            and not (i and lines[i - 1].startswith("|"))
        ):
            cells = lambda ln: [c.strip().strip("*`") for c in ln.strip().strip("|").split("|")]  # noqa: E731
            rows = [cells(ln) for ln in lines[i + 2 :] if ln.startswith("|")]
            end = next((k for k, ln in enumerate(lines[i + 2 :]) if not ln.startswith("|")), len(lines) - i - 2)
            tables.append((cells(line), rows[:end]))
    return tables


def table_cell(doc: str, row: str, column: str) -> str:
    """The one cell whose row's first cell starts with `row` and whose header starts with `column`."""
    hits = [
        (r[header.index(h)] if header.index(h) < len(r) else "")
        for header, rows in markdown_tables(read(doc))
        for h in header
        if h.startswith(column)
        for r in rows
        if r[0].startswith(row)
    ]
    assert len(hits) == 1, f"{doc}: {len(hits)} cells for row {row!r}, column {column!r}"
    return hits[0]


def quoted_figures(doc: str) -> list[tuple[str, tuple[str, str, str] | None]]:
    """Each ratio in the prose of `doc` (not in tables or code), with the (file, row, column) of the
    source marker that covers it (None if no marker does, or for the paper's figures and the targets):
    a marker covers the figures since the previous one, in order."""
    text = re.sub(r"^```.*?^```", "", read(doc), flags=re.S | re.M)
    prose = "\n".join(ln for ln in text.splitlines() if not ln.startswith("|"))
    out, pending = [], []
    for m in re.finditer(f"{FIGURE.pattern}|{SOURCE.pattern}", prose, flags=re.S):
        if m.group(0).startswith("<!--"):
            file, refs = m.group(4), [[c.strip() for c in r.split(" | ")] for r in re.split(r";\s+", m.group(5))]
            assert len(refs) == len(pending) and all(len(r) == 2 for r in refs), (
                f"{doc}: {m.group(0)} names {len(refs)} cells for {len(pending)} figures {pending}"
            )
            out += [(f, (file, *ref)) for f, ref in zip(pending, refs)]
            pending = []
        elif (figure := next(g for g in m.groups()[:3] if g)) in PAPER_AND_TARGETS:
            out.append((figure, None))  # the paper's or a target, quoted as such: no table cell
        else:
            pending.append(figure)
    return out + [(f, None) for f in pending]


def test_every_quoted_ratio_is_its_own_table_cell():
    """Issue 24: a ratio quoted in the prose of the README or a doc (x1.042, 1.65x, 0.991) is the figure of
    the table cell its marker names, by row and column (model, engine, measure), not the same number
    anywhere in any table. Paper figures and targets aside, a ratio without a marker fails."""
    checked = 0
    for doc in DOCS:
        for figure, source in quoted_figures(doc):
            if source is None:
                assert figure in PAPER_AND_TARGETS, f"{doc}: {figure} quoted without <!-- from FILE: ROW | COLUMN -->"
                continue
            cell = table_cell(*source)
            in_cell = re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", cell)
            assert in_cell, f"{doc}: {figure} not in {source}: {cell!r}"
            checked += 1
    assert checked >= 20  # the README's bench paragraph alone quotes 14


def test_the_ratio_check_can_fail(tmp_path, monkeypatch):
    """Its own teeth: a figure that is another row's, another column's, or unmarked is caught."""
    doc = tmp_path / "d.md"
    table = "| run | train | infer |\n|---|---|---|\n| SE | x1.042 | x1.010 |\n| ECA | x1.028 | x1.003 |\n"
    monkeypatch.setattr(sys.modules[__name__], "read", lambda path: open(os.path.join(tmp_path, path)).read())
    good = "SE trains at x1.042<!-- from d.md: SE | train --> and infers at 1.010x<!-- from d.md: SE | infer -->."
    for prose, fails in (
        (good, False),
        (good.replace("SE | train", "ECA | train"), True),
        (good.replace("SE | infer", "SE | train"), True),
        ("SE trains at x1.028.", True),
    ):
        doc.write_text(table + "\n" + prose + "\n")
        failed = False
        try:
            for figure, source in quoted_figures("d.md"):
                assert source is not None, figure
                assert figure in table_cell(*source), figure
        except AssertionError:
            failed = True
        assert failed == fails, prose


def test_every_tool_sets_up_the_cpu_before_paddle_is_imported(tmp_path):
    """README: every tool calls setup_cpu before `import paddle` (which would pin OpenMP to one thread)."""
    probe = (
        "import runpy, sys\n"
        "import senet.runtime as r\n"
        "def setup_cpu(threads):\n"
        "    print('setup_cpu', threads, 'paddle' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "r.setup_cpu = setup_cpu\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "print('never called')\n"
    )
    weights = str(tmp_path / "none.safetensors")
    args = {
        "tools/train.py": ["-c", DEMO, "-o", f"output_dir={tmp_path}"],
        "tools/eval.py": ["-c", DEMO, "-o", f"model.weights={weights}"],
        "tools/export.py": ["-c", DEMO, "-o", f"model.weights={weights}"],
        "tools/analyze_se.py": ["-c", DEMO],
        "tools/analyze_gates.py": ["-c", DEMO],
        "tools/check_data.py": ["-c", DEMO],
        "tools/compare.py": ["-c", DEMO],
        "tools/doctor.py": ["--out", str(tmp_path / "doctor")],
        "tools/convert_weights.py": ["--from", "auto", str(tmp_path / "none.pth"), "--out", str(tmp_path / "c")],
        "tools/infer.py": ["--model", str(tmp_path), "--images", str(tmp_path)],
        "tools/bench.py": [],
        "tools/sweep.py": ["-c", DEMO, "--out", str(tmp_path), "--table-only"],
    }
    assert sorted(args) == TOOLS, "a new tool: add it here"
    jobs = {tool: POOL.submit(run, sys.executable, "-c", probe, tool, *a) for tool, a in args.items()}
    for tool, job in jobs.items():
        out = job.result().stdout
        assert "setup_cpu" in out and "never called" not in out, (tool, out, job.result().stderr[-1500:])
        assert out.split("setup_cpu", 1)[1].split()[1] == "False", f"{tool} imported paddle before setup_cpu"
