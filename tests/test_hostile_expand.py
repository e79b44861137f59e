"""Issue 23: small files that expand. Each hostile file is made here, in at least two variants (other
sizes, other layouts), and fed to the tools a user runs; each must be refused with a one-line error
that names the file, in bounded memory (the peak RSS of the tool's process, read by a wrapper) and
bounded time. docs/reliability.md, "Hostile files", has a row per class."""

import os
import subprocess
import sys

import numpy as np
import pytest

from senet.hostile import (
    pickle_sharing,
    progressive_jpeg,
    repeat_smallest_scan,
    safetensors_sharing,
    tar_with_big_header,
    write_pth,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs argv as a child and prints the child's peak resident memory in MB on its last stdout line: a
# wrapper process of its own, so no other test's children count.
PEAK = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
    "sys.exit(p.returncode)\n"
)


def run_tool(name, *args, timeout=120):
    """(process, peak MB) of tools/<name> run with args."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, os.path.join(ROOT, "tools", name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    return proc, int(lines[-1])


def one_line_error(proc):
    """The tool's stderr holds exactly one line starting with error:, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- archives: extended headers


@pytest.fixture(scope="module")
def normal_cifar_peak(tmp_path_factory):
    """Peak MB of check_data on a small valid CIFAR-10 tarball: what the tool needs anyway (Paddle, OpenCV)."""
    from senet.data.fake import make_fake_cifar

    root = str(tmp_path_factory.mktemp("cifar"))
    make_fake_cifar(root, "cifar10")
    proc, peak = run_tool("check_data.py", "-o", "data.name=cifar10", f"data.root={root}", "data.verify_md5=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return peak


@pytest.mark.parametrize("kind, mb", [(b"L", 300), (b"K", 160), (b"x", 200)])
def test_archive_with_an_expanding_extended_header_is_refused(tmp_path, kind, mb, normal_cifar_peak):
    tar = str(tmp_path / "cifar-10-python.tar.gz")
    tar_with_big_header(tar, kind, mb << 20)
    assert os.path.getsize(tar) < mb * 5000  # a few hundred KB on disk
    # With the MD5 check off: the reader itself must be safe (a repacked copy is read that way).
    proc, peak = run_tool("check_data.py", "-o", "data.name=cifar10", f"data.root={tar}", "data.verify_md5=false")
    line = one_line_error(proc)
    assert proc.returncode == 2 and tar in line and "header of" in line and f"{mb << 20:,} bytes" in line, line
    # Unbounded, the header alone adds its size (a 1 GiB header: 1,392 MB against 373 MB, measured).
    assert peak < normal_cifar_peak + 64, f"peak {peak} MB for a {mb} MiB header, {normal_cifar_peak} MB normally"


# --------------------------------------------------------------------------- images: cheap to store, slow to decode


@pytest.mark.parametrize("side, times", [(2048, 2000), (512, 1200), (4096, 300)])
def test_jpeg_with_a_repeated_scan_is_refused_before_decoding(tmp_path, side, times):
    """Three shapes of the class: many scans on a mid-size image, more scans than libjpeg-turbo's limit on a
    small one, and few scans on a big one (scans x pixels over the budget). Each is refused by decode_image
    without decoding, and named by check_data --decode."""
    from senet.data import BadImageError
    from senet.data.decode import MAX_JPEG_SCANS, MAX_SCAN_PIXELS, decode_image, jpeg_scans

    bomb = repeat_smallest_scan(progressive_jpeg(side), times)
    path = tmp_path / "imagenet" / "train" / "n01" / "bomb.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(bomb)
    scans = jpeg_scans(np.frombuffer(bomb, np.uint8))
    assert scans > MAX_JPEG_SCANS or scans * side * side > MAX_SCAN_PIXELS
    assert len(bomb) < 300_000  # small on disk
    from senet.data.dali import read_encoded

    for reader in (decode_image, read_encoded):  # every decoder's reader (OpenCV's, DALI's) refuses it
        with pytest.raises(BadImageError, match=f"declares a JPEG of {scans:,} scans over {side}x{side} pixels"):
            reader(str(path))
    (tmp_path / "imagenet" / "val" / "n01").mkdir(parents=True)
    (tmp_path / "imagenet" / "val" / "n01" / "ok.jpg").write_bytes(progressive_jpeg(64, flat=False))
    proc, _ = run_tool("check_data.py", "-o", "data.name=imagenet", f"data.root={tmp_path / 'imagenet'}", "--decode")
    assert proc.returncode == 1 and str(path) in proc.stdout + proc.stderr and "scans" in proc.stdout + proc.stderr


def test_ordinary_progressive_jpegs_still_decode(tmp_path):
    from senet.data.decode import decode_image

    for side in (64, 2048):
        path = tmp_path / f"p{side}.jpg"
        path.write_bytes(progressive_jpeg(side, flat=False))
        assert decode_image(str(path)).shape == (side, side, 3)


# --------------------------------------------------------------------------- weights files that expand


@pytest.fixture(scope="module")
def normal_convert_peak(tmp_path_factory):
    """Peak MB of convert_weights refusing a small valid .pth it cannot map (the work before the refusal is
    what every case below does: Paddle, the reader)."""
    path = str(tmp_path_factory.mktemp("pth") / "small.pth")
    write_pth(path, {"fc.weight": ("0", 0, (10, 64), (64, 1))}, {"0": np.zeros(640, np.float32)})
    proc, peak = run_tool("convert_weights.py", "--from", "torchvision", path, "--out", path + ".out")
    assert proc.returncode == 1 and "error" in proc.stderr.lower(), proc.stderr[-2000:]
    return peak


def pth_cases():
    four = np.zeros(1, np.float32)  # 4 bytes
    big = np.zeros(1 << 20, np.float32)  # 4 MiB
    return {
        "stride 0": ({"w": ("0", 0, (1 << 14, 1 << 14), (0, 0))}, {"0": four}, 0, "share storage"),
        "stride 0, one dim": (
            {"w": ("0", 0, (3, 1 << 26), (1, 0))},
            {"0": np.zeros(3, np.float32)},
            0,
            "share storage",
        ),
        "overlapping dims": (
            {"w": ("0", 0, (1 << 13, 1 << 13), (1, 2))},
            {"0": np.zeros(3 << 13, np.float32)},
            0,
            "share storage",
        ),
        "1000 views of one storage": (
            {f"w{i}": ("0", 0, (1 << 10, 1 << 10), (1 << 10, 1)) for i in range(1000)},
            {"0": big},
            0,
            "copy out",
        ),
        "300 transposed views": (
            {f"w{i}": ("0", 0, (1 << 10, 1 << 10), (1, 1 << 10)) for i in range(300)},
            {"0": big},
            0,
            "copy out",
        ),
        "compressed data.pkl, 512 MiB": ({"w": ("0", 0, (1,), (1,))}, {"0": four}, 512, "inflates to"),
        "compressed data.pkl, 200 MiB": ({"w": ("0", 0, (1,), (1,))}, {"0": four}, 200, "inflates to"),
    }


@pytest.mark.parametrize("case", list(pth_cases()))
def test_pth_that_expands_is_refused(tmp_path, case, normal_convert_peak):
    tensors, storages, pickle_mb, message = pth_cases()[case]
    path = str(tmp_path / "hostile.pth")
    write_pth(path, tensors, storages, pickle_mb)
    assert os.path.getsize(path) < 5 << 20
    proc, peak = run_tool("convert_weights.py", "--from", "torchvision", path, "--out", str(tmp_path / "out"))
    line = one_line_error(proc)
    assert proc.returncode == 1 and path in line and message in line, line
    assert peak < normal_convert_peak + 64, f"{case}: peak {peak} MB, {normal_convert_peak} MB normally"


@pytest.mark.parametrize(
    "what, make",
    [
        (
            "1000 safetensors entries over one 4 MB range",
            lambda p: safetensors_sharing(p + ".safetensors", 1000, 1 << 20),
        ),
        (
            "300 safetensors entries, each overlapping the last",
            lambda p: safetensors_sharing(p + ".safetensors", 300, 1 << 20, overlap=1 << 10),
        ),
        ("one array under 1002 names in a .pdparams", lambda p: pickle_sharing(p + ".pdparams", 1002, 600_000)),
        ("one array under 300 names in a .pdparams", lambda p: pickle_sharing(p + ".pdparams", 300, 1 << 20)),
    ],
)
def test_weights_stored_once_and_named_many_times_are_refused(tmp_path, what, make, normal_convert_peak):
    """Issue 23: a 4 MB safetensors whose 1000 tensors share one byte range took 4.4 GB in convert_weights
    and eval; a PaddleClas pickle with one array under 1002 names, 2.4 GB. Both tools refuse both, in bounded
    memory."""
    make(str(tmp_path / "w"))
    path = str(next(p for p in tmp_path.iterdir() if p.name.startswith("w.")))
    source = "paddleclas" if path.endswith(".pdparams") else "timm"
    convert, peak = run_tool("convert_weights.py", "--from", source, path, "--out", str(tmp_path / "out"))
    line = one_line_error(convert)
    said = ("share bytes", "one array stored under")  # the format's rule, or the pickle's array budget
    assert convert.returncode == 1 and path in line and any(w in line for w in said), line
    assert peak < normal_convert_peak + 64, f"{what}: peak {peak} MB"
    evaluate, peak = run_tool(
        "eval.py",
        "-c",
        os.path.join(ROOT, "configs", "demo", "se_resnet20_digits.yaml"),
        "-o",
        f"model.weights={path}",
        "model.trust_pickle=true",
    )
    assert evaluate.returncode == 1 and path in evaluate.stderr, evaluate.stderr[-2000:]
    assert any(w in evaluate.stderr for w in said), evaluate.stderr[-2000:]
    assert peak < normal_convert_peak + 200, f"{what}: eval peak {peak} MB"  # eval also builds the model and data


# --------------------------------------------------------------------------- messages that name the right thing


def test_a_renamed_weights_file_is_named_for_what_it_is(tmp_path):
    """Issue 23: a .safetensors renamed .pdparams was called "truncated or corrupt". Each reader now says
    what the file really is, both ways round."""
    import shutil

    import paddle

    from senet.checkpoint import CheckpointError, load_weights, save_checkpoint, save_safetensors
    from senet.resnet import create_model

    model = create_model("resnet20", num_classes=4)
    real_st, real_ckpt = str(tmp_path / "real.safetensors"), str(tmp_path / "real.pdparams")
    save_safetensors(model, real_st)
    save_checkpoint(real_ckpt, {"model": {k: v.numpy() for k, v in model.state_dict().items()}})
    cases = {
        "st_as.pdparams": (real_st, "is not a checkpoint but a safetensors file: rename it to .safetensors"),
        "ckpt_as.safetensors": (real_ckpt, "is not a safetensors file but a pickle (a .pdparams checkpoint?)"),
    }
    for name, (source, says) in cases.items():
        path = str(tmp_path / name)
        shutil.copy(source, path)
        with pytest.raises(
            CheckpointError,
            match=f"{path} {says}".replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("?", r"\?"),
        ):
            load_weights(create_model("resnet20", num_classes=4), path)
    del paddle


def test_check_data_summarises_many_bad_files(tmp_path):
    """Issue 23: check_data printed every bad file (100,000 lines for a broken copy); past a few dozen it now
    says how many more there are (--json lists them all)."""
    import json

    from senet.data.fake import make_fake_imagenet

    root = make_fake_imagenet(str(tmp_path / "data"), classes=2, train_per_class=60, val_per_class=2, jpeg_only=True)
    bad = sorted((tmp_path / "data" / "train").rglob("*.JPEG"))[:55]
    for path in bad:
        path.write_bytes(b"\xff\xd8 broken")
    args = ["-o", f"data.root={root}", "data.name=imagenet", "model.num_classes=2", "--decode"]
    proc, _ = run_tool("check_data.py", *args)
    assert proc.returncode == 1 and "55 bad files" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    listed = [ln for ln in proc.stdout.splitlines() if ln.startswith("    ") and ": " in ln and "more" not in ln]
    assert len(listed) == 40 and "... and 15 more (--json lists every one)" in proc.stdout
    proc, _ = run_tool("check_data.py", *args, "--json")
    text = "\n".join(proc.stdout.strip().splitlines()[:-1])  # the wrapper's peak is the last line
    report = json.loads(text[text.index("{") :])
    assert len(report["train"]["bad"]) == 55
