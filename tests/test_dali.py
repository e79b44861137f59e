"""data.loader: dali (issue 22) on the CPU: DALI's `cpu` decoder, outputs through numpy.

Against our loader on the same tiny folders: the same samples in the same order on every rank (each
once per epoch over all ranks), labels, shapes, the same crops and flips (train) and val images, within
the measured tolerance of senet.data.dali (VAL_MAX_DIFF, VAL_MEAN_DIFF: the resize filters differ);
determinism per seed and exact resume; bad images named, then raised or skipped; the one-line error
without DALI; the conversion the GPU path uses, run on a CPU tensor. The `mixed` decoder and DLPack
on a CUDA stream need a GPU and have not run (docs/data.md).

`make test` installs DALI, so in CI (CI=true) a missing DALI fails these tests rather than skipping them.
"""

from __future__ import annotations

import os
import random

import numpy as np
import paddle
import pytest

from senet.config import load_config
from senet.data import BadImageError, DatasetError, build_dataset, build_loader
from senet.data import dali as dali_mod
from senet.data.fake import FORMATS, fake_image, make_fake_imagenet, write_image
from senet.data.loader import Loader
from senet.data.transforms import random_resized_crop, resize, resize_center_crop

if not dali_mod.dali_installed():
    if os.environ.get("CI"):
        pytest.fail("NVIDIA DALI is not installed; `make test` installs it (make install DALI=1)", pytrace=False)
    pytest.skip("NVIDIA DALI is not installed (make install DALI=1)", allow_module_level=True)

CLASSES = len(FORMATS)  # each class starts the cycle of formats elsewhere: every format in train and val


def make_cfg(tmp_path, root: str, *overrides: str) -> dict:
    return load_config(
        None,
        [
            "data.name=imagenet",
            f"data.root={root}",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.image_size=32",
            "data.eval_resize=36",
            "data.eval_crop=32",
            f"model.num_classes={CLASSES}",
            f"output_dir={tmp_path / 'out'}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """7 classes x (5 train, 3 val) images of 64x48, cycling through every format of senet.data.fake."""
    return make_fake_imagenet(str(tmp_path_factory.mktemp("dali") / "imagenet"), CLASSES, 5, 3)


def batches(loader, epoch: int, start_batch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    loader.set_epoch(epoch, start_batch)
    return [(x.numpy(), y.numpy()) for x, y in loader]


def assert_close_to_ours(ours: list, dali: list) -> None:
    """Same batch shapes and labels, every image within the tolerance senet.data.dali states."""
    assert [x.shape for x, _ in dali] == [x.shape for x, _ in ours]
    for (a, y), (b, z) in zip(ours, dali):
        assert b.dtype == np.uint8 and z.dtype == np.int64
        np.testing.assert_array_equal(z, y)
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1)
        assert diff.max() <= dali_mod.VAL_MAX_DIFF, diff.max(axis=1)
        assert diff.mean(axis=1).max() <= dali_mod.VAL_MEAN_DIFF, diff.mean(axis=1)


# ---------------------------------------------------------------- the geometry shared with our transforms


def test_train_window_and_eval_geometry_are_our_transforms():
    rng = np.random.default_rng(0)
    for width, height in [(64, 48), (48, 64), (300, 20), (20, 300), (37, 37)]:
        img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for seed in range(40):
            ours = random_resized_crop(img, 24, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(seed))
            x, y, w, h = dali_mod.train_window(width, height, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(seed))
            np.testing.assert_array_equal(resize(img[y : y + h, x : x + w], 24, 24), ours)
        nw, nh, x, y = dali_mod.eval_geometry(width, height, 36, 20)
        np.testing.assert_array_equal(resize(img, nw, nh)[y : y + 20, x : x + 20], resize_center_crop(img, 36, 20))


# ---------------------------------------------------------------- batches against our loader


def test_val_and_train_batches_match_ours_on_every_format(tmp_path, folder):
    for split in ("val", "train"):
        ours, dali = (
            build_loader(make_cfg(tmp_path, folder, f"data.loader={kind}"), split) for kind in ("paddle", "dali")
        )
        assert isinstance(ours, Loader) and isinstance(dali, dali_mod.DaliLoader) and len(dali) == len(ours)
        for epoch in (0, 1):  # a new epoch: new shuffle, crops and flips (train), the pipeline reused
            assert_close_to_ours(batches(ours, epoch), batches(dali, epoch))


def test_every_sample_once_per_epoch_over_all_ranks(tmp_path, folder):
    """Three ranks: each DALI image is closest to our loader's image at its own position, and those are
    distinct samples (our sampler's shards), so DALI yields each sample once per epoch over the ranks."""
    for split in ("train", "val"):
        cfg = make_cfg(tmp_path, folder, "data.batch_size=2")
        ours = [batches(build_loader(cfg, split, rank=r, world_size=3), 2) for r in range(3)]
        dali = [
            batches(
                build_loader(
                    make_cfg(tmp_path, folder, "data.batch_size=2", "data.loader=dali"), split, rank=r, world_size=3
                ),
                2,
            )
            for r in range(3)
        ]
        a = np.concatenate([x for rank in ours for x, _ in rank]).astype(np.float32).reshape(-1, 32 * 32 * 3)
        b = np.concatenate([x for rank in dali for x, _ in rank]).astype(np.float32).reshape(-1, 32 * 32 * 3)
        distance = np.abs(b[:, None, :] - a[None, :, :]).mean(axis=2)
        np.testing.assert_array_equal(distance.argmin(axis=1), np.arange(len(b)))
        n = len(build_dataset(cfg, split))
        assert len(b) == (n if split == "val" else n // 3 // 2 * 2 * 3)


def test_deterministic_per_seed_and_resumes_exactly(tmp_path, folder):
    cfg = make_cfg(tmp_path, folder, "data.loader=dali", "train.seed=5")
    first, second = build_loader(cfg, "train"), build_loader(cfg, "train")
    run = batches(first, 3)
    for (x, y), (u, v) in zip(run, batches(second, 3)):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)
    for (x, _), (u, _) in zip(run[2:], batches(second, 3, start_batch=2)):
        np.testing.assert_array_equal(x, u)  # set_epoch(3, start_batch=2): the rest of epoch 3, as it was
    other = batches(build_loader(make_cfg(tmp_path, folder, "data.loader=dali", "train.seed=6"), "train"), 3)
    assert any(not np.array_equal(x, u) for (x, _), (u, _) in zip(run, other))


def test_an_early_break_leaves_the_next_epoch_whole(tmp_path, folder):
    loader = build_loader(make_cfg(tmp_path, folder, "data.loader=dali"), "train")
    whole = batches(loader, 1)
    loader.set_epoch(0)
    for _ in loader:
        break  # the batches DALI prepared ahead are dropped, not served next epoch
    for (x, y), (u, v) in zip(whole, batches(loader, 1), strict=True):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


# ---------------------------------------------------------------- bad images, settings, no DALI


def _bad_folder(tmp_path) -> tuple[str, dict[str, str]]:
    """A val split of 6 good images and 3 bad ones: empty, a JPEG whose data is garbage after a valid
    header (DALI's decoder fails on it, unnamed), and a text file; name -> what the error must say."""
    root = tmp_path / "bad"
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                write_image(str(root / split / f"c{c}" / f"good{i}.jpg"), fake_image(rng, c, 2, 64, 48), "rgb")
    val = root / "val" / "c1"
    (val / "a_empty.jpg").write_bytes(b"")
    head = (val / "good0.jpg").read_bytes()[:600]  # the header, tables and a little scan data
    (val / "b_garbage.jpg").write_bytes(head + bytes(range(256)) * 20)
    (val / "c_text.jpg").write_bytes(b"not an image " * 40)
    return str(root), {
        "a_empty.jpg": "is an empty file",
        "b_garbage.jpg": "not a decodable image",
        "c_text.jpg": "has no image header",
    }


def test_bad_images_are_named_then_raised_or_skipped(tmp_path):
    root, bad = _bad_folder(tmp_path)
    cfg = ["data.loader=dali", "model.num_classes=2", "data.batch_size=3"]
    for name, reason in bad.items():  # one bad file at a time, so each must be the one named
        others = [os.path.join(root, "val", "c1", n) for n in bad if n != name]
        for p in others:
            os.rename(p, p + ".off")
        loader = build_loader(load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'out'}", *cfg]), "val")
        with pytest.raises(BadImageError) as e:
            batches(loader, 0)
        message = str(e.value)
        assert os.path.join(root, "val", "c1", name) in message and reason in message, message
        assert "on_bad_image=skip" in message and "\n" not in message
        for p in others:
            os.rename(p + ".off", p)
    skip = load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'out'}", "data.on_bad_image=skip", *cfg])
    loader = build_loader(skip, "val")
    for epoch in (0, 1):
        got = batches(loader, epoch)
        assert loader.pop_skipped() == sorted(os.path.join(root, "val", "c1", n) for n in bad)
        # c0's 3 good images, then c1's 3 bad ones (sorted first: a batch of only bad files, dropped), then
        # c1's 3 good ones; the garbage JPEG failed DALI's run, so its batch came again from a new pipeline
        assert [len(y) for _, y in got] == [3, 3] and sorted(np.concatenate([y for _, y in got])) == [0] * 3 + [1] * 3


def test_settings_dali_does_not_serve(tmp_path, folder, capsys):
    with pytest.raises(DatasetError, match=r"does not apply data\.color_jitter=0\.4; set -o data\.color_jitter=0\.0"):
        build_loader(make_cfg(tmp_path, folder, "data.loader=dali", "data.color_jitter=0.4"), "train")
    synthetic = load_config(
        None,
        [
            "data.name=synthetic",
            "data.loader=dali",
            "data.synthetic_train_size=8",
            "model.num_classes=2",
            "data.num_workers=0",
            "data.batch_size=4",
        ],
    )
    assert isinstance(build_loader(synthetic, "train"), Loader)
    assert "data.loader=dali reads image files; data.name=synthetic is held in memory" in capsys.readouterr().err


def test_without_dali_a_one_line_error_names_the_install_command(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(dali_mod, "dali_installed", lambda: False)  # a machine without DALI
    with pytest.raises(DatasetError) as e:
        build_loader(make_cfg(tmp_path, folder, "data.loader=dali"), "train")
    assert "make install DALI=1" in str(e.value) and "\n" not in str(e.value)


def test_the_gpu_paths_conversion_on_a_cpu_tensor():
    """DLPack, as the GPU path hands DALI's output to Paddle (on a GPU with Paddle's stream): the same
    bytes, shape and dtype; and the GPU's device id is read from Paddle's device string."""
    from nvidia.dali import fn, pipeline_def, types

    data = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        return fn.external_source(source=lambda: list(data), batch=True, dtype=types.UINT8)

    p = pipe()
    p.build()
    (out,) = p.run()
    tensor = dali_mod.to_paddle_via_dlpack(out.as_tensor(), None)
    assert tensor.dtype == paddle.uint8 and tensor.shape == [2, 4, 5, 3]
    np.testing.assert_array_equal(tensor.numpy(), data)


def test_the_gpu_pipelines_are_ones_dali_accepts(tmp_path, folder):
    """The `mixed` (GPU) pipelines as defined for device 0: DALI checks every operator, backend and argument
    when a pipeline is defined; only build() needs CUDA, which these machines lack (and DALI says so)."""
    cfg = make_cfg(tmp_path, folder)
    for split in ("train", "val"):
        feed = dali_mod._Feed(build_dataset(cfg, split), split == "train", skip_bad=False)
        pipe = dali_mod.define_pipeline(feed, 4, 2, 0, cfg["data"])
        assert pipe.device_id == 0 and pipe.num_threads == 2
        try:
            pipe.build()  # builds on a machine with a GPU
        except RuntimeError as e:
            assert "CUDA is not available" in str(e)  # the only reason it may not build here


def test_dali_runs_on_paddles_current_gpu(monkeypatch):
    assert dali_mod.dali_device_id() is None  # this CPU: DALI's CPU-only pipeline, decoder `cpu`
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:1")  # a stand-in for rank 1 of a GPU job
    assert dali_mod.dali_device_id() == 1
