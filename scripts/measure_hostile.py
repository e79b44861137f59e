"""What each class of hostile file costs the tool that reads it: peak memory, time, exit code.

    .venv/bin/python scripts/measure_hostile.py                        # this tree, about 5 minutes
    git archive HEAD | tar -x -C /tmp/before                           # an older tree, e.g. before a fix
    .venv/bin/python scripts/measure_hostile.py --before /tmp/before   # both, side by side (a few GB)

Each case is the worst of its class that tests/test_hostile.py and tests/test_hostile_expand.py build
smaller (senet.hostile makes the files), fed to the tool a user would run; "normal" rows are valid
inputs of the same kind, for scale. The peak is the tool process's own maximum resident set, read
by a wrapper process (nothing else counts); a case still running after --timeout seconds is killed
and reported so. The last row times the checkpoint checksum. Prints a Markdown table
(docs/reliability.md, "Hostile files").
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEAK = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(p.stderr[-400:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
    "sys.exit(p.returncode)\n"
)
DEMO = os.path.join("configs", "demo", "se_resnet20_digits.yaml")


def export_resnet18(tmp: str, fake: str) -> str:
    """A random-init ResNet-18 exported for 4 classes (resize 256, crop 224): what infer loads."""
    from senet.checkpoint import save_safetensors
    from senet.resnet import create_model

    weights = os.path.join(tmp, "resnet18.safetensors")
    save_safetensors(create_model("resnet18", num_classes=4), weights, {"arch": "resnet18"})
    out = os.path.join(tmp, "export")
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "export.py"),
            "-c",
            DEMO,
            "-o",
            "model.arch=resnet18",
            "model.num_classes=4",
            "model.stem_pool=pytorch",  # the random weights' metadata names no stem pool: say which
            "data.name=imagenet",
            "data.image_size=224",  # ImageNet's sizes, not the demo config's 32 px
            "data.eval_resize=256",
            "data.eval_crop=224",
            f"data.root={fake}",
            f"model.weights={weights}",
            f"output_dir={tmp}",
            "--output",
            out,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


def exported_variant(export: str, tmp: str, name: str, edit=None, garbage: bool = False) -> str:
    """A copy of the export with inference.yml edited, or its graph replaced by random bytes."""
    import shutil

    import yaml

    out = os.path.join(tmp, name)
    shutil.copytree(export, out)
    info_path = os.path.join(out, "inference.yml")
    with open(info_path) as f:
        info = yaml.safe_load(f)
    info.pop("sha256", None)  # the edited files no longer match their digests: judge them on their own
    if edit:
        edit(info)
    if garbage:
        import numpy as np

        for n in os.listdir(out):
            if n.startswith("model.") and n.endswith((".json", ".onnx", ".safetensors")):
                os.remove(os.path.join(out, n))
        with open(os.path.join(out, "model.pdmodel"), "wb") as f:
            f.write(np.random.default_rng(0).bytes(5000))
        info["files"] = {"paddle": {"model": "model.pdmodel", "params": "model.pdiparams"}}
    with open(info_path, "w") as f:
        yaml.safe_dump(info, f)
    return out


def cases(tmp: str) -> list[tuple[str, list[str]]]:
    """(what, tool and arguments; {tree} is replaced by the tree's tools folder) of each case."""
    import numpy as np

    from senet.data.fake import make_fake_cifar, make_fake_imagenet
    from senet.hostile import (
        cifar_with_a_huge_member,
        endless_list_file,
        jpeg_header_bomb,
        long_png,
        pickle_of_shared_lists,
        pickle_sharing,
        progressive_jpeg,
        repeat_smallest_scan,
        safetensors_sharing,
        tar_with_big_header,
        write_pth,
    )

    j = os.path.join
    fake = make_fake_imagenet(j(tmp, "fake"), classes=4, train_per_class=6, val_per_class=1)
    check = ["check_data.py", "-o", "model.num_classes=4"]  # the fake ImageNet's; CIFAR rows say 10
    out: list[tuple[str, list[str]]] = []

    def one(what, *tool):
        out.append((what, list(tool)))

    # Issue 16: images, lists, archives, pickles, exported models.
    export = export_resnet18(tmp, fake)
    with open(j(tmp, "photo.jpg"), "wb") as f:
        f.write(progressive_jpeg(500, flat=False))
    one("normal: a 500x500 JPEG", "infer.py", "--model", export, "--images", j(tmp, "photo.jpg"))
    jpeg_header_bomb(j(tmp, "bomb.jpg"))
    one(
        "929-byte JPEG declaring 15000x15000, a stray byte before its frame header",
        "infer.py",
        "--model",
        export,
        "--images",
        j(tmp, "bomb.jpg"),
    )
    long_png(j(tmp, "long.png"))
    one("103-byte 8000x1 PNG", "infer.py", "--model", export, "--images", j(tmp, "long.png"))
    os.mkfifo(j(tmp, "fifo.jpg"))
    one("a FIFO named fifo.jpg", "infer.py", "--model", export, "--images", j(tmp, "fifo.jpg"))
    one("normal: 28 fake images", *check, "data.name=imagenet", f"data.root={fake}", "--decode")
    hostile = make_fake_imagenet(j(tmp, "hostile"), classes=4, train_per_class=6, val_per_class=1)
    os.rename(j(tmp, "bomb.jpg"), j(hostile, "train", sorted(os.listdir(j(hostile, "train")))[0], "bomb.jpg"))
    os.rename(j(tmp, "long.png"), j(hostile, "train", sorted(os.listdir(j(hostile, "train")))[1], "long.png"))
    os.mkfifo(j(hostile, "val", sorted(os.listdir(j(hostile, "val")))[0], "fifo.jpg"))
    one(
        "the bomb, the long PNG and a FIFO in an image folder",
        *check,
        "data.name=imagenet",
        f"data.root={hostile}",
        "--decode",
    )
    endless_list_file(j(tmp, "train.txt"))
    one(
        "list file of one endless line (1 GiB, sparse)",
        *check,
        "data.name=imagenet",
        f"data.root={fake}",
        f"data.train_list={j(tmp, 'train.txt')}",
    )
    normal_tar = make_fake_cifar(j(tmp, "cifar"), "cifar10")
    os.rename(normal_tar, j(tmp, "normal.tar.gz"))  # another name: no MD5 check in any tree
    one(
        "normal: a small CIFAR-10 tarball",
        *check,
        "data.name=cifar10",
        "model.num_classes=10",
        f"data.root={j(tmp, 'normal.tar.gz')}",
    )
    cifar_with_a_huge_member(j(tmp, "member.tar.gz"))
    one(
        "CIFAR .tar.gz whose test_batch member says 2 GiB",
        *check,
        "data.name=cifar10",
        "model.num_classes=10",
        f"data.root={j(tmp, 'member.tar.gz')}",
    )
    pickle_of_shared_lists(j(tmp, "lists.pdparams"))
    one(
        "227-byte checkpoint of shared lists (2^30 leaves)",
        "eval.py",
        "-c",
        DEMO,
        "-o",
        f"model.weights={j(tmp, 'lists.pdparams')}",
    )

    def crop_3000(info):
        info["preprocess"]["crop"] = info["preprocess"]["resize"] = 3000
        info["input"]["shape"] = [-1, 3, 3000, 3000]

    one(
        "inference.yml with crop and resize 3000",
        "infer.py",
        "--model",
        exported_variant(export, tmp, "crop3000", crop_3000),
        "--images",
        j(tmp, "photo.jpg"),
    )
    one(
        "5,000 random bytes as model.pdmodel",
        "infer.py",
        "--model",
        exported_variant(export, tmp, "garbage", garbage=True),
        "--images",
        j(tmp, "photo.jpg"),
    )

    # Issue 23: small files that expand.
    tar_with_big_header(j(tmp, "header.tar.gz"), b"L", 1 << 30)
    one(
        "tarball with a 1 GiB GNU long-name header",
        *check,
        "data.name=cifar10",
        "model.num_classes=10",
        f"data.root={j(tmp, 'header.tar.gz')}",
    )
    for name, data in (
        ("normal_scan", progressive_jpeg(2048, flat=False)),
        ("scans", repeat_smallest_scan(progressive_jpeg(2048), 2000)),
    ):
        for split in ("train", "val"):
            os.makedirs(j(tmp, name, split, "n01"))
            with open(j(tmp, name, split, "n01", "a.jpg"), "wb") as f:
                f.write(data)
        one(
            "normal: a progressive 2048x2048 JPEG"
            if name == "normal_scan"
            else "JPEG 2048x2048, one scan repeated 2,000 times (57 KB)",
            *check[:2],
            "model.num_classes=1",
            "data.name=imagenet",
            f"data.root={j(tmp, name)}",
            "--decode",
        )
    convert = ["convert_weights.py", "--from"]
    write_pth(
        j(tmp, "normal.pth"), {"fc.weight": ("0", 0, (1000, 2048), (2048, 1))}, {"0": np.zeros(2048 * 1000, np.float32)}
    )
    one(
        "normal: an 8 MB .pth (read whole; exit 1: one fc tensor is no model)",
        *convert,
        "torchvision",
        j(tmp, "normal.pth"),
    )
    write_pth(
        j(tmp, "stride0.pth"),
        {f"w{i}": ("0", 0, (1 << 14, 1 << 14), (0, 0)) for i in range(3)},
        {"0": np.zeros(1, np.float32)},
    )
    one(
        ".pth: 3 tensors of stride 0, 2^28 elements each, over a 4-byte storage",
        *convert,
        "torchvision",
        j(tmp, "stride0.pth"),
    )
    views = {f"w{i}": ("0", 0, (1 << 10, 1 << 10), (1 << 10, 1)) for i in range(1000)}
    write_pth(j(tmp, "views.pth"), views, {"0": np.zeros(1 << 20, np.float32)})
    one(".pth: 1000 tensors viewing one 4 MB storage", *convert, "torchvision", j(tmp, "views.pth"))
    write_pth(j(tmp, "inflate.pth"), {"w": ("0", 0, (1,), (1,))}, {"0": np.zeros(1, np.float32)}, 1024)
    one(".pth: data.pkl deflated from 1 GiB", *convert, "torchvision", j(tmp, "inflate.pth"))
    safetensors_sharing(j(tmp, "shared.safetensors"), 1000, 1 << 20)
    one("safetensors: 1000 entries over one 4 MB range", *convert, "timm", j(tmp, "shared.safetensors"))
    pickle_sharing(j(tmp, "names.pdparams"), 1002, 600_000)
    one("PaddleClas pickle: one 2.4 MB array under 1002 names", *convert, "paddleclas", j(tmp, "names.pdparams"))
    return out


def measure(tree: str, tool: list[str], tmp: str, timeout: float) -> str:
    """ "peak MB, seconds, exit N" of the tool in `tree`, or what stopped it."""
    args = [os.path.join(tree, "tools", tool[0]), *tool[1:]]
    if tool[0] == "convert_weights.py":
        args += ["--out", tempfile.mkdtemp(dir=tmp) + "/out"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", PEAK, sys.executable, *args],
        cwd=tree,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"still running after {timeout:.0f} s (killed)"
    seconds = time.perf_counter() - start
    return f"{int(stdout.strip().splitlines()[-1]):,} MB, {seconds:.1f} s, exit {proc.returncode}"


def checksum_cost(tree: str) -> str:
    """save_checkpoint / load_checkpoint of an SE-ResNet-50 state (model, momentum, EMA), 3 times each."""
    code = (
        f"import sys, time; sys.path.insert(0, {tree!r})\n"
        "from senet.runtime import setup_cpu; setup_cpu(0)\n"
        "import tempfile, os\n"
        "from senet.checkpoint import save_checkpoint, load_checkpoint\n"
        "from senet.resnet import create_model\n"
        "sd = {k: v.numpy() for k, v in create_model('se_resnet50').state_dict().items()}\n"
        "state = {'model': sd, 'optimizer': {k: v.copy() for k, v in sd.items()}, 'ema': dict(sd),\n"
        "         'lr_scheduler': {}, 'epoch': 1, 'batch_in_epoch': 0, 'global_step': 1, 'rng': {},\n"
        "         'history': [], 'config': {}}\n"
        "path = os.path.join(tempfile.mkdtemp(), 'c.pdparams')\n"
        "s, l = [], []\n"
        "for _ in range(3):\n"
        "    t = time.perf_counter(); save_checkpoint(path, state); s.append(time.perf_counter() - t)\n"
        "    t = time.perf_counter(); load_checkpoint(path); l.append(time.perf_counter() - t)\n"
        "print(f'save {min(s):.2f}-{max(s):.2f} s, load {min(l):.2f}-{max(l):.2f} s, '\n"
        "      f'{os.path.getsize(path) / 2**20:.0f} MiB')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else f"failed: {proc.stderr[-200:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, help="another source tree to run the same cases in")
    parser.add_argument("--timeout", type=float, default=150, help="seconds before a case is killed (default 150)")
    args = parser.parse_args()
    trees = ([("before", os.path.abspath(args.before))] if args.before else []) + [("now", ROOT)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for what, tool in cases(tmp):
            cells = []
            for label, tree in trees:
                cells.append(measure(tree, tool, tmp, args.timeout))
                print(f"{what}, {label}: {cells[-1]}", file=sys.stderr, flush=True)
            rows.append(f"| {what} | `tools/{tool[0]}` | " + " | ".join(cells) + " |")
        rows.append(
            "| checksum cost: an SE-ResNet-50 training state | `save_checkpoint` / `load_checkpoint` | "
            + " | ".join(checksum_cost(tree) for _, tree in trees)
            + " |"
        )
    print("| case | tool | " + " | ".join(f"{label}: peak, time, exit" for label, _ in trees) + " |")
    print("|---|---|" + "---|" * len(trees))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
