"""The Paddle boundary (issue 24).

senet has two kinds of modules. Paddle-free ones (PADDLE_FREE) never import Paddle when they load:
configs, limits, the byte-level readers, the attention options, the data files, the tools' command
lines, the benchmark's planning and reports. They can run before Paddle is set up (threads must be
set before `import paddle`, senet.runtime.setup_cpu) and in processes that never need it. The rest
import Paddle at the top. An import inside a function is then one of:
  - the boundary: a Paddle-free module or a tool's main() reaching a Paddle module, after setup;
  - a package only some paths need, listed in OPTIONAL with the reason.
Anything else (a stdlib module, or one Paddle-free module importing another) belongs at the top.
"""

import ast
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PADDLE_FREE = [
    "senet",
    "senet.attention_options",
    "senet.compare",
    "senet.config",
    "senet.folders",
    "senet.formats",
    "senet.hostile",
    "senet.imagenet_classes",
    "senet.limits",
    "senet.numerics",
    "senet.runlock",
    "senet.runtime",
    "senet.sweep",
    "senet.data.archive",
    "senet.data.decode",
    "senet.data.errors",
    "senet.data.fake",
    "senet.data.ignored",
    "senet.data.index",
    "senet.data.prepare",
    "senet.data.transforms",
    "senet.weights",
    "senet.weights.convert",
    "senet.weights.synthetic",
    "senet.weights.torchfile",
    "senet.doctor",
    "senet.doctor.context",
    "senet.doctor.deploy_checks",
    "senet.doctor.machine",
    "senet.doctor.plan",
    "senet.doctor.train_checks",
    "senet.bench",
    "senet.bench.environment",
    "senet.bench.memory",
    "senet.bench.modes",
    "senet.bench.options",
    "senet.bench.plan",
    "senet.bench.report",
    "senet.bench.run",
    "senet.bench.timing",
    "senet.inference",
    "senet.isa",
    "senet.bench.bandwidth",
]

# Packages imported where they are used, and why.
OPTIONAL = {
    "nvidia": "DALI: installed only with `make install DALI=1`",
    "onnxruntime": "ONNX Runtime: only the onnxruntime engine needs it, and onnxruntime-gpu replaces it on GPUs",
    "openvino": "OpenVINO: only the openvino engine needs it",
    "nncf": "OpenVINO's quantizer: only INT8 export needs it",
    "paddle2onnx": "only ONNX export needs it",
    "onnx": "only ONNX export needs it (installed with paddle2onnx)",
    "ppim": "only ppim.<name> architectures need it; its import loads every model",
    "visualdl": "only a training run's writer needs it (about 1 s to import)",
    "matplotlib": "only the analysis plots need it (about 0.5 s to import)",
    "sklearn": "only the digits demo dataset needs it (about 1 s to import)",
    "scipy": "only the ImageNet devkit's meta.mat needs it (installed with scikit-learn)",
    "torch": "only tests and weight fixtures use it, from their own environment",
    "timm": "as torch",
    "torchvision": "as torch",
    "pynvml": "only a GPU machine's report needs it",
    "PIL": "Pillow comes with matplotlib, not on its own; its two readers work without it",
}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def _senet_files() -> list[str]:
    out = []
    for folder in ("senet", "tools"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _is_paddle_side(module: str) -> bool:
    """A senet module that imports Paddle when it loads: not in PADDLE_FREE (a package's submodule
    counts as the module itself, e.g. `senet.data` for `from senet.data import build_loader`)."""
    return module.split(".")[0] == "paddle" or (module.startswith("senet") and module not in PADDLE_FREE)


BLOCK_PADDLE = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "paddle" or name.startswith("paddle."):
            raise ImportError(f"Paddle is blocked, and {name} was imported")
sys.meta_path.insert(0, Blocker())
"""


def _import_blocked(modules: list[str]) -> subprocess.CompletedProcess:
    code = BLOCK_PADDLE + "".join(f"import {m}\n" for m in modules) + "assert 'paddle' not in sys.modules\n"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_paddle_free_modules_load_with_paddle_blocked():
    proc = _import_blocked(PADDLE_FREE)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_block_catches_a_module_that_imports_paddle():
    """The check has teeth: the trainer imports Paddle, so it cannot load with Paddle blocked."""
    proc = _import_blocked(["senet.config", "senet.train"])
    assert proc.returncode != 0 and "Paddle is blocked" in proc.stderr


def test_every_paddle_free_module_exists():
    for m in PADDLE_FREE:
        assert importlib.util.find_spec(m) is not None, m


def _function_imports(path: str) -> list[tuple[int, str]]:
    tree = ast.parse(open(path).read())
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:  # `from senet import sweep`: senet.sweep
                    found += [
                        (
                            node.lineno,
                            f"{node.module}.{a.name}"
                            if importlib.util.find_spec(node.module) and _is_submodule(node.module, a.name)
                            else node.module,
                        )
                        for a in node.names
                    ]
    return sorted(set(found))


def _is_submodule(package: str, name: str) -> bool:
    folder = os.path.join(ROOT, *package.split("."))
    return package.startswith("senet") and (
        os.path.isfile(os.path.join(folder, name + ".py")) or os.path.isdir(os.path.join(folder, name))
    )


def misplaced_imports(path: str) -> list[str]:
    """The imports inside functions of one file that the rule in this module's docstring does not allow."""
    module = _module_name(path)
    paddle_free = module in PADDLE_FREE or module.startswith("tools.")
    out = []
    for line, name in _function_imports(path):
        top = name.split(".")[0]
        if top in OPTIONAL or (paddle_free and _is_paddle_side(name)):
            continue
        out.append(f"{os.path.relpath(path, ROOT)}:{line}: import {name}")
    return out


def test_imports_inside_functions_only_cross_the_paddle_boundary_or_load_an_optional_package():
    bad = [line for path in _senet_files() for line in misplaced_imports(path)]
    assert not bad, "imports to move to the top of their module:\n" + "\n".join(bad)


def test_the_rule_flags_a_needless_import_inside_a_function(tmp_path):
    """Teeth: a stdlib import and a Paddle-free senet import inside a function are flagged; Paddle in
    a Paddle-free module is the boundary and passes."""
    folder = tmp_path / "senet"
    folder.mkdir()
    path = folder / "config.py"  # named as a Paddle-free module
    path.write_text("def f():\n    import json\n    from senet.limits import open_regular\n    import paddle\n")
    global ROOT
    saved, ROOT = ROOT, str(tmp_path)
    try:
        assert misplaced_imports(str(path)) == [
            "senet/config.py:2: import json",
            "senet/config.py:3: import senet.limits",
        ]
    finally:
        ROOT = saved


@pytest.mark.parametrize("tool", sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")))
def test_every_tool_answers_help_without_paddle(tool):
    """A tool's command line (parsing, --help) is Paddle-free: `--help` works with Paddle blocked,
    so a typo or a question never waits for Paddle, and threads are set before it loads."""
    code = BLOCK_PADDLE + (
        f"sys.argv = ['{tool}', '--help']\nimport runpy\nrunpy.run_path('tools/{tool}', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
