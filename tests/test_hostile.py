"""Issue 16: hostile files and damaged checkpoints. Every hostile file is made here by the test.

One test (or a few) per class: checkpoint integrity (bit-flip fuzz, fallback of --resume auto,
version-1 checkpoints), pickle bombs, safetensors dtypes / NaN / digests, images (decompression
bombs whose header our parser cannot read, extreme aspect ratios, FIFOs), CIFAR archives, list
files, exported models (inference.yml ranges, a garbage .pdmodel that segfaults Paddle Inference,
digests). The tools are run in subprocesses to check the one-line message and the exit code.
See docs/reliability.md, "Hostile files".
"""

import io
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import paddle
import pytest
import yaml

from senet import checkpoint as ckpt
from senet import formats
from senet.data import BadImageError, DatasetError
from senet.data import decode as decode_mod
from senet.data.datasets import cifar_member_limit, load_cifar
from senet.data.decode import MAX_ASPECT, MAX_PIXELS, decode_image
from senet.data.fake import make_fake_cifar, make_fake_imagenet
from senet.data.index import imagenet_index, read_list
from senet.inference import ModelDirError, Predictor
from senet.limits import regular_file_problem
from senet.resume import find_resume_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def tool(name, *args, timeout=120):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc):
    """The tool's stderr ends in one line starting with error:, and holds no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO opened for reading) fails the test after 20 s instead of hanging it."""

    def alarm(signum, frame):
        raise TimeoutError("blocked: a FIFO was opened for reading")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- checkpoints


def small_state(seed=0):
    paddle.seed(seed)
    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Linear(4, 3))
    return {
        "model": model.state_dict(),
        "optimizer": {},
        "lr_scheduler": {"last_epoch": 3},
        "epoch": 1,
        "batch_in_epoch": 0,
        "global_step": 4,
        "rng": ckpt.rng_state(),
        "history": [{"top1": 1.0}],
        "best_top1": 1.0,
        "best_epoch": 0,
        "skipped_steps": 0,
    }, model


def test_bit_flips_are_refused_or_harmless(tmp_path):
    """150 random single-bit flips anywhere in a checkpoint: each load is refused with a message, or gives the
    original tensors bit for bit. No third outcome (a silent load of other weights, or another exception)."""
    path = str(tmp_path / "last.pdparams")
    ckpt.save_checkpoint(path, small_state()[0])
    original = open(path, "rb").read()
    want = ckpt.load_checkpoint(path)["model"]
    rng = random.Random(16)
    refused = 0
    for trial in range(150):
        data = bytearray(original)
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        damaged = str(tmp_path / f"flip{trial}.pdparams")
        with open(damaged, "wb") as f:
            f.write(data)
        try:
            got = ckpt.load_checkpoint(damaged)["model"]
        except ckpt.CheckpointError as e:
            assert damaged in str(e) and "\n" not in str(e)
            refused += 1
        else:
            assert sorted(got) == sorted(want), f"bit {bit}"
            for k in want:
                assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), f"bit {bit}: {k}"
        os.remove(damaged)
    # In fact every flip is refused: in the pickle or the digest it fails the checksum; in the trailer's
    # magic the file reads as one without a trailer, which a version-2 checkpoint must not be.
    assert refused == 150


def test_bit_flips_in_model_safetensors_are_refused_or_harmless(tmp_path):
    """The same fuzz on model.safetensors, whose digest sits in its metadata: 100 flips."""
    _, model = small_state()
    path = str(tmp_path / "model.safetensors")
    ckpt.save_safetensors(model, path, {"arch": "x", "config": json.dumps({"a": [1, 2]})})
    original, want = open(path, "rb").read(), ckpt.extract_model_state(path)
    rng = random.Random(17)
    for _ in range(100):
        data = bytearray(original)
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        damaged = str(tmp_path / "flip.safetensors")
        with open(damaged, "wb") as f:
            f.write(data)
        try:
            got = ckpt.extract_model_state(damaged)
        except ckpt.CheckpointError as e:
            assert damaged in str(e) and "\n" not in str(e)
        else:  # e.g. a flip in the digest's key name: the tensors must still be the original ones
            assert sorted(got) == sorted(want), f"bit {bit}"
            assert all(np.array_equal(got[k], want[k]) for k in want), f"bit {bit}"


def test_version_1_checkpoints_still_load_with_a_notice(tmp_path, capsys):
    state, _ = small_state()
    buf = io.BytesIO()
    paddle.save({ckpt.MARKER: 1, **state}, buf)  # what save_checkpoint wrote before the checksum
    path = str(tmp_path / "old.pdparams")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    loaded = ckpt.load_checkpoint(path)
    assert loaded["global_step"] == 4
    assert "version-1 checkpoint" in capsys.readouterr().err
    # A version-2 file that lost its trailer is not mistaken for a version-1 one.
    ckpt.save_checkpoint(path, state)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - formats.TRAILER_SIZE)
    with pytest.raises(ckpt.CheckpointError, match="lacks the checksum"):
        ckpt.load_checkpoint(path)


def _damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    elif how == "truncate":
        data = data[: len(data) // 3]
    elif how == "garbage":
        data = bytearray(os.urandom(len(data)))
    with open(path, "wb") as f:
        f.write(data)


def test_resume_auto_falls_back_past_every_kind_of_damage(tmp_path, capsys):
    """last, epoch_N and best damaged in different ways: --resume auto's search names each and falls back."""
    folder = tmp_path / "checkpoints"
    state, _ = small_state()
    for name, step in (("epoch_1", 4), ("epoch_2", 8), ("best", 8), ("last", 12)):
        ckpt.save_checkpoint(str(folder / f"{name}.pdparams"), {**state, "global_step": step})
    _damage(str(folder / "last.pdparams"), "flip")
    _damage(str(folder / "epoch_2.pdparams"), "truncate")
    _damage(str(folder / "best.pdparams"), "garbage")
    # A structurally wrong but checksummed file (an exception inside restore otherwise).
    ckpt.save_checkpoint(str(folder / "epoch_3.pdparams"), {**state, "rng": None})
    os.mkfifo(folder / "epoch_4.pdparams")  # would block a reader for good
    found = find_resume_checkpoint(str(tmp_path))
    assert found == str(folder / "epoch_1.pdparams")
    err = capsys.readouterr().err
    for name, why in (
        ("last", "checksum"),
        ("epoch_2", "truncated or corrupt"),
        ("best", "corrupt"),
        ("epoch_3", "rng (NoneType, not dict)"),
        ("epoch_4", "FIFO"),
    ):
        line = next(ln for ln in err.splitlines() if f"{name}.pdparams" in ln)
        assert why in line, line


def test_pickle_bombs_are_refused_quickly(tmp_path):
    # 30 levels of lists that share one reference: 2^30 leaves to any walk, in about 400 bytes.
    bomb = []
    for _ in range(30):
        bomb = [bomb, bomb]
    data = pickle.dumps({ckpt.MARKER: 2, "model": bomb}, protocol=4)
    assert len(data) < 500
    deep = b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b"."  # lists nested 100,000 deep
    huge = pickle.dumps(np.zeros(1)).replace(b"K\x00\x85", b"J\x00\x00\x00\x40\x85")  # _reconstruct shape 2^30
    for name, blob, why in (
        ("bomb", data, "more than 1,000,000 objects"),
        ("deep", deep, "nested more than 64"),
        ("huge", huge, "non-empty shape"),
    ):
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(blob)
        with pytest.raises(ckpt.CheckpointError, match=why):
            ckpt.read_pickle(str(path))


# --------------------------------------------------------------------------- safetensors


def write_safetensors(path, tensors, metadata=None):
    """A .safetensors file by hand: bf16 and odd dtypes that safetensors.numpy cannot write."""
    header, blobs, offset = {}, [], 0
    for name, (code, shape, raw) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_safetensors_dtypes_nan_and_digest(tmp_path):
    w = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)
    cases = {"F64": w.astype(np.float64), "F16": w.astype(np.float16), "BF16": bf16}
    for code, a in cases.items():
        p = str(tmp_path / f"{code}.safetensors")
        write_safetensors(p, {"w": (code, [3, 4], a.tobytes())})
        got = ckpt.extract_model_state(p)["w"]
        assert got.dtype == np.float32
        expect = (bf16.astype(np.uint32) << 16).view(np.float32) if code == "BF16" else a.astype(np.float32)
        assert np.array_equal(got, expect), code
    for code, a in {"I64": np.arange(12, dtype=np.int64), "BOOL": np.ones(12, np.bool_)}.items():
        p = str(tmp_path / f"{code}.safetensors")
        write_safetensors(p, {"layer.w": (code, [3, 4], a.tobytes())})
        with pytest.raises(ckpt.CheckpointError, match=rf"tensor 'layer.w' is {code}.*re-save the weights as floats"):
            ckpt.extract_model_state(p)
    p = str(tmp_path / "overflow.safetensors")
    write_safetensors(p, {"w": ("F64", [1], np.array([1e300]).tobytes())})
    with pytest.raises(ckpt.CheckpointError, match="beyond the float32 range"):
        ckpt.extract_model_state(p)
    for fill in (np.nan, np.inf):
        p = str(tmp_path / "nan.safetensors")
        write_safetensors(p, {"fc.weight": ("F32", [3, 4], np.full((3, 4), fill, np.float32).tobytes())})
        with pytest.raises(ckpt.CheckpointError, match=r"tensor 'fc.weight' holds 12 NaN/Inf values"):
            ckpt.extract_model_state(p)
    # Malformed headers: a length beyond the file, offsets beyond the data, a shape that disagrees.
    p = str(tmp_path / "bad.safetensors")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ckpt.CheckpointError, match="header length"):
        ckpt.extract_model_state(p)
    write_safetensors(p, {"w": ("F32", [1000, 1000], w.tobytes())})
    with pytest.raises(ckpt.CheckpointError, match="malformed entry"):
        ckpt.extract_model_state(p)
    # A shape whose element count wraps int64 to 0 must not pass as an empty tensor.
    write_safetensors(p, {"w": ("F32", [2**32, 2**32], b"")})
    with pytest.raises(ckpt.CheckpointError, match="malformed entry"):
        ckpt.extract_model_state(p)
    # Our own files carry a digest: a flipped bit in a tensor is refused, the untouched file loads.
    _, model = small_state()
    good = str(tmp_path / "model.safetensors")
    ckpt.save_safetensors(model, good, {"arch": "x"})
    ckpt.load_weights(model, good)
    data = bytearray(open(good, "rb").read())
    data[-5] ^= 0x01
    with open(p, "wb") as f:
        f.write(data)
    with pytest.raises(ckpt.CheckpointError, match="fails its SHA-256 checksum"):
        ckpt.extract_model_state(p)


def test_eval_refuses_hostile_weights_in_one_line(tmp_path):
    bomb = []
    for _ in range(30):
        bomb = [bomb, bomb]
    p = tmp_path / "bomb.pdparams"
    p.write_bytes(pickle.dumps({ckpt.MARKER: 2, "model": bomb}))
    r = tool("eval.py", "-c", "configs/demo/resnet20_digits.yaml", "-o", f"model.weights={p}")
    assert r.returncode == 1
    assert "more than 1,000,000 objects" in one_line_error(r)


# --------------------------------------------------------------------------- images


def jpeg_bomb(path, side=15000, stray=True):
    """A 16x16 JPEG whose frame header says side x side, with one stray byte before it that libjpeg skips
    (it decodes the full declared size) but a strict parser stops at."""
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = side.to_bytes(2, "big") + side.to_bytes(2, "big")
    if stray:
        data[i:i] = b"\x00"
    path.write_bytes(bytes(data))
    return str(path)


def long_png(path, w=8000, h=1):
    ok, buf = cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))
    path.write_bytes(buf.tobytes())
    return str(path)


def test_image_bombs_are_refused_whether_or_not_the_header_parses(tmp_path, monkeypatch):
    bomb = jpeg_bomb(tmp_path / "bomb.jpg")
    with pytest.raises(BadImageError, match=r"declares 15000x15000 pixels, more than the 67,108,864"):
        decode_image(bomb)
    # Our parser blind: OpenCV's own cap (set by senet/__init__.py before cv2 loaded) still refuses it.
    assert decode_mod.OPENCV_CAP_SET
    monkeypatch.setattr(decode_mod, "header_size", lambda buf: None)
    with pytest.raises(BadImageError, match="pixels OpenCV may decode"):
        decode_image(bomb)
    monkeypatch.undo()
    for w, h in ((8000, 1), (1, 8000), (MAX_ASPECT * 10 + 1, 10)):
        with pytest.raises(BadImageError, match=rf"declares {w}x{h} pixels, an aspect ratio beyond the 1:{MAX_ASPECT}"):
            decode_image(long_png(tmp_path / "long.png", w, h))
    assert decode_image(long_png(tmp_path / "ok.png", MAX_ASPECT * 10, 10)).shape == (10, MAX_ASPECT * 10, 3)
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(decode_mod.MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(BadImageError, match="more than the 268,435,456 read from one image"):
        decode_image(str(big))
    assert MAX_PIXELS == 1 << 26


def test_special_files_are_refused_without_opening(tmp_path, no_hang):
    fifo = tmp_path / "cat.jpg"
    os.mkfifo(fifo)
    problem = regular_file_problem(str(fifo))
    assert problem.kind == "not_regular" and "FIFO" in str(problem)
    with pytest.raises(BadImageError, match="is a FIFO"):
        decode_image(str(fifo))
    with pytest.raises(BadImageError, match="is a character device"):
        decode_image("/dev/zero")
    lst = tmp_path / "train.txt"
    os.mkfifo(lst)
    with pytest.raises(DatasetError, match=r"data.train_list file .*train.txt is a FIFO"):
        imagenet_index(str(tmp_path), "train", str(lst), 2, None)
    with pytest.raises(ckpt.CheckpointError, match="is a FIFO"):
        ckpt.load_checkpoint(str(fifo))
    os.mkdir(tmp_path / "model")
    os.mkfifo(tmp_path / "model" / "inference.yml")
    with pytest.raises(ModelDirError, match="is a FIFO"):
        Predictor(str(tmp_path / "model"))
    # One endless line in a list file is not read whole.
    (tmp_path / "long.txt").write_text("a" * 100_000)
    with pytest.raises(DatasetError, match="line longer than 4096"):
        read_list(str(tmp_path), str(tmp_path / "long.txt"), 2)


@pytest.fixture(scope="module")
def hostile_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    make_fake_imagenet(str(root), classes=2, train_per_class=3, val_per_class=2)
    folder = root / "train" / "n00000000"
    jpeg_bomb(folder / "bomb.jpg")
    long_png(folder / "long.png")
    os.mkfifo(folder / "fifo.jpg")
    return str(root)


def test_check_data_names_each_hostile_image_and_does_not_hang(hostile_imagenet):
    r = tool(
        "check_data.py",
        "-o",
        "data.name=imagenet",
        f"data.root={hostile_imagenet}",
        "model.num_classes=2",
        "data.num_workers=2",
        f"output_dir={hostile_imagenet}/out",
        "--decode",
        "--json",
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)["train"]
    reasons = dict(zip((os.path.basename(p) for p in report["bad"]), report["bad_reasons"]))
    assert sorted(reasons) == ["bomb.jpg", "fifo.jpg", "long.png"], reasons
    assert "declares 15000x15000" in reasons["bomb.jpg"]
    assert "aspect ratio" in reasons["long.png"] and "FIFO" in reasons["fifo.jpg"]


# --------------------------------------------------------------------------- CIFAR archives


def _tar_member_header(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def test_cifar_member_bigger_than_the_format_needs_is_refused_before_reading(tmp_path):
    import gzip

    root = tmp_path / "c"
    root.mkdir()
    # A member header that says 2 GiB, followed by a little data: refused from the header alone.
    raw = _tar_member_header("cifar-10-batches-py/test_batch", 2 << 30) + b"\0" * 4096
    with gzip.open(root / "cifar-10-python.tar.gz", "wb") as f:
        f.write(raw)
    with pytest.raises(
        DatasetError,
        match=r"member cifar-10-batches-py/test_batch is 2,147,483,648 bytes, more "
        r"than a CIFAR test_batch file needs",
    ):
        load_cifar("cifar10", str(root), "val", verify_md5=False)  # the reader itself, past the MD5 check
    # The extracted folder: the same limit from os.stat, and a FIFO is refused.
    make_fake_cifar(str(tmp_path / "ok"), "cifar10", train=20, test=10)
    folder = tmp_path / "x" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with tarfile.open(tmp_path / "ok" / "cifar-10-python.tar.gz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    with open(folder / "test_batch", "r+b") as f:
        f.truncate(cifar_member_limit("test_batch") + 1)
    with pytest.raises(DatasetError, match="more than a CIFAR test_batch file needs"):
        load_cifar("cifar10", str(tmp_path / "x"), "val")
    os.remove(folder / "test_batch")
    os.mkfifo(folder / "test_batch")
    with pytest.raises(DatasetError, match="is a FIFO"):
        load_cifar("cifar10", str(tmp_path / "x"), "val")


# --------------------------------------------------------------------------- exported models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from senet.config import load_config
    from senet.export import export
    from senet.resnet import build_model

    out = tmp_path_factory.mktemp("export")
    cfg = load_config(os.path.join(ROOT, "configs/demo/resnet20_digits.yaml"))
    paddle.seed(0)
    model = build_model(cfg)
    model.eval()
    export(cfg, str(out / "model"), ["paddle"], model=model)
    return out / "model"


def _variant(exported, tmp_path, edit=None, files=None):
    import shutil

    d = tmp_path / "variant"
    shutil.copytree(exported, d)
    info = yaml.safe_load((d / "inference.yml").read_text())
    if edit:
        edit(info)
    (d / "inference.yml").write_text(yaml.safe_dump(info))
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    return str(d)


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda i: i["preprocess"].update(std=[0, 0.5, 0.5]), r"preprocess.std must be 3 numbers in 1e-06..1000"),
        (lambda i: i["preprocess"].update(crop=3000, resize=3000), r"preprocess.crop must be an integer in 1..1024"),
        (lambda i: i["preprocess"].pop("mean"), r"preprocess.mean is missing"),
        (lambda i: i.pop("files"), r"lacks files"),
        (lambda i: i["preprocess"].update(crop="32"), r"preprocess.crop must be an integer"),
        (lambda i: i["files"]["paddle"].update(model="/dev/zero"), r"files.paddle must give model and params as file"),
        (lambda i: i["preprocess"].update(crop=16, resize=16), r"input.shape .* does not match preprocess.crop 16"),
        (lambda i: i["input"].update(shape=5), r"input.shape must be a list of 4 integers"),  # was a TypeError
        (lambda i: i["input"].update(shape=[-1, 3, "x", 32]), r"input.shape must be a list of 4 integers"),
        (lambda i: i.update(classes="cats"), r"classes must be a list of class names"),
    ],
)
def test_inference_yml_is_validated(exported, tmp_path, edit, why):
    with pytest.raises(ModelDirError, match=why):
        Predictor(_variant(exported, tmp_path, edit))


def test_damaged_or_garbage_model_files_are_errors_not_crashes(exported, tmp_path):
    good = (exported / "model.json").read_bytes()
    # A changed graph is caught by its digest before Paddle sees it.
    d = _variant(exported, tmp_path, files={"model.json": good.replace(b'"1.conv2d"', b'"1.relu"', 1)})
    with pytest.raises(ModelDirError, match="model.json fails its SHA-256 check"):
        Predictor(d)
    import shutil

    shutil.rmtree(d)

    # Without digests (an older export, or a hand-made folder): a garbage .pdmodel segfaults Paddle
    # Inference 3.3.1; it is loaded in a child process first, so here it is an error naming the file.
    def legacy(info):
        info.pop("sha256")
        info["files"]["paddle"]["model"] = "model.pdmodel"

    d = _variant(exported, tmp_path, legacy, files={"model.pdmodel": bytes(random.Random(0).randbytes(5000))})
    with pytest.raises(ModelDirError, match=r"model.pdmodel crashed Paddle Inference while loading \(SIGSEGV\)"):
        Predictor(d)


def test_infer_reports_hostile_images_and_models_in_one_line(exported, tmp_path, hostile_imagenet):
    folder = os.path.join(hostile_imagenet, "train", "n00000000")
    good = next(
        os.path.join(folder, n)
        for n in sorted(os.listdir(folder))
        if n.endswith(".jpg") and "bomb" not in n and "fifo" not in n
    )
    r = tool(
        "infer.py",
        "--model",
        str(exported),
        "--images",
        good,
        *(os.path.join(folder, n) for n in ("bomb.jpg", "long.png", "fifo.jpg")),
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 3 and "3 of 4 inputs failed" in r.stderr, r.stderr
    d = _variant(exported, tmp_path, lambda i: i["preprocess"].update(std=[0, 0, 0]))
    r = tool("infer.py", "--model", d, "--images", good)
    assert r.returncode == 2
    assert "preprocess.std" in one_line_error(r)
