"""The GPU code paths (issue 22), tested as far as a CPU allows; docs/gpu.md lists what only a GPU checks.

Paddle's CPU build has no fp16 or bf16 conv, matmul or momentum kernels, so no AMP O2 step can run
here. What can: the state an O2 run holds and writes (dtypes, state-dict and optimizer structure,
master weights, the EMA), the order of the setup calls, and every decision the code makes from the
device (the dtype an eval runs in, the notices, the flags, the GPU an engine uses). Where Paddle
would answer "no GPU", a stand-in answers as a GPU would: `as_on_a_gpu` makes paddle.amp.decorate
take its GPU branch (its real code then decorates the model and optimizer exactly as on a GPU), and
senet.device's queries are replaced with a device description.
"""

import copy
import importlib
import json
import os
import time

import numpy as np
import paddle
import pytest
from test_train import fit_here, read_json, tiny_cfg

from senet import checkpoint as ckpt
from senet import device as dev
from senet.checkpoint import CheckpointError, load_checkpoint, load_weights, read_safetensors, save_checkpoint
from senet.config import load_config
from senet.resnet import build_model
from senet.step import eval_amp, weights_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "model.arch=se_resnet20",
    "model.num_classes=4",
    "model.se.reduction=4",
    "data.name=synthetic",
    "data.image_size=16",
    "data.eval_crop=16",
    "data.synthetic_train_size=64",
    "data.synthetic_val_size=24",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.epochs=2",
    "optimizer.lr=0.8",
]


class _GpuPlace:
    """What paddle.amp.decorate asks of the tracer's place, answered as a CUDA place would."""

    def is_gpu_place(self):
        return True

    def is_xpu_place(self):
        return False

    def is_custom_place(self):
        return False


class _TracerOnAGpu:
    """The real dygraph tracer, except that its expected place says GPU."""

    def __init__(self, tracer):
        self._tracer, self._expected_place = tracer, _GpuPlace()

    def __getattr__(self, name):
        return getattr(self._tracer, name)


def as_on_a_gpu(monkeypatch):
    """paddle.amp.decorate as on an Ampere GPU: its own code casts the model (BatchNorm stays fp32), turns on
    the optimizer's master weights and registers save_dtype's state-dict hooks. Only its device queries are
    stood in for."""
    auto_cast = importlib.import_module("paddle.amp.auto_cast")  # the module: paddle.amp.auto_cast is a function too
    real = auto_cast._dygraph_tracer
    monkeypatch.setattr(auto_cast, "_dygraph_tracer", lambda: _TracerOnAGpu(real()))
    monkeypatch.setattr(auto_cast, "_is_gpu_float16_supported", lambda: True)
    monkeypatch.setattr(auto_cast, "_is_gpu_bfloat16_supported", lambda: True)


def gpu_device(monkeypatch, capability=(8, 0), cuda="12.6"):
    """senet.device's view of the machine: a GPU of this compute capability, Paddle built with this CUDA."""
    monkeypatch.setattr(dev, "has_gpu", lambda: True)
    monkeypatch.setattr(dev, "gpu_capability", lambda: capability)
    monkeypatch.setattr(paddle.version, "cuda", lambda: cuda)
    from senet import train as train_mod

    monkeypatch.setattr(train_mod, "apply_cudnn_flags", lambda: {})  # a CPU build of Paddle has no cuDNN flags


def o2_cfg(out, *extra):
    return load_config(
        None,
        [*TINY, "train.amp.enabled=true", "train.amp.level=O2", "train.amp.dtype=float16", f"output_dir={out}", *extra],
    )


def o2_setup(monkeypatch, cfg):
    """senet.train.setup of an O2 config as a GPU runs it (in a fresh parameter-name space, as a process)."""
    from senet.train import setup

    as_on_a_gpu(monkeypatch)
    gpu_device(monkeypatch)
    with paddle.utils.unique_name.guard():
        state, _, val_loader, env = setup(cfg)
    return state, val_loader, env


def first_step_state(optimizer, model):
    """What an optimizer step creates before its kernel runs (Paddle's _create_optimization_pass): the fp32
    master weights of the fp16 parameters and their accumulators. The momentum kernel itself has no fp16
    version on a CPU; this is the code that reads the master weights' names after a resume."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    optimizer._create_accumulators(paddle.static.default_main_program().global_block(), params)


def inner(model):
    return model._layers if isinstance(model, paddle.DataParallel) else model


# ---------------------------------------------------------------- item 2: decorate before DataParallel


def test_o2_decorates_the_model_before_data_parallel_wraps_it(tmp_path, monkeypatch):
    """Paddle refuses to decorate a DataParallel model (check_models, the real check, runs here): the model
    is cast and the optimizer given master weights first, then wrapped."""
    from senet import train as train_mod

    monkeypatch.setattr(train_mod, "world", lambda: (0, 2))
    calls = []
    real_decorate, real_dp = paddle.amp.decorate, paddle.DataParallel
    monkeypatch.setattr(
        paddle.amp,
        "decorate",
        lambda model, *a, **k: calls.append(("decorate", type(model))) or real_decorate(model, *a, **k),
    )

    class DataParallel(real_dp):  # still the class Paddle's check_models tests against
        def __init__(self, model, *args, **kwargs):
            calls.append(("DataParallel", weights_dtype(model)))
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(paddle, "DataParallel", DataParallel)
    state, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run"))
    assert [c[0] for c in calls] == ["decorate", "DataParallel"]
    assert calls[1][1] == "float16"  # DataParallel wrapped the decorated model
    assert isinstance(state.model, real_dp) and weights_dtype(state.model) == "float16"
    assert state.optimizer._multi_precision


# ---------------------------------------------------------------- items 5, 6: what an O2 run saves and resumes


def test_an_o2_checkpoint_holds_float32_weights_and_resumes_master_weights_by_name(tmp_path, monkeypatch):
    state, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run", "train.ema.enabled=true"))
    model, opt = state.model, state.optimizer
    live = model.state_dict(use_hook=False)
    assert str(live["stem.0.weight"].dtype) == "paddle.float16" and str(live["stem.1.weight"].dtype) == "paddle.float32"
    with paddle.utils.unique_name.guard():
        first_step_state(opt, model)
    masters = opt._master_weights
    assert masters and all(m.dtype == paddle.float32 for m in masters.values())
    # Master weights that fp16 cannot hold (as after some steps), and a non-zero velocity: both must survive.
    with paddle.no_grad():
        for m in masters.values():
            paddle.assign(m + 1e-5, output=m)
        for v in opt._accumulators["velocity"].values():
            paddle.assign(paddle.full_like(v, 0.25), output=v)
    saved_masters = {k: m.numpy().copy() for k, m in masters.items()}
    names = {k: m.name for k, m in masters.items()}

    path = str(tmp_path / "last.pdparams")
    save_checkpoint(path, state.to_checkpoint())
    loaded = load_checkpoint(path)
    # save_dtype: the weights leave training as float32 (eval, export and model.weights take them as they are)
    assert {v.dtype for v in loaded["model"].values()} == {np.dtype(np.float32)}
    assert {v.dtype for v in loaded["ema"].values()} == {np.dtype(np.float32)}
    assert loaded["optimizer"]["master_weight_names"] == names

    resumed, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run", "train.ema.enabled=true"))
    resumed.restore(loaded, path)  # the fp32 weights go into fp16 parameters: cast, not refused
    with paddle.utils.unique_name.guard():
        first_step_state(resumed.optimizer, resumed.model)  # reads each master weight's .name, loads velocities
    back = resumed.optimizer._master_weights
    assert all(isinstance(m, paddle.Tensor) for m in back.values())
    assert {k: m.name for k, m in back.items()} == names
    for k, m in back.items():
        np.testing.assert_array_equal(m.numpy(), saved_masters[k])  # exact: no fp16 round trip
    assert all(float(v.min()) == float(v.max()) == 0.25 for v in resumed.optimizer._accumulators["velocity"].values())
    a, b = model.state_dict(use_hook=False), resumed.model.state_dict(use_hook=False)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k].numpy(), b[k].numpy()), k


def test_master_weights_restored_as_arrays_fail_at_the_first_step(tmp_path, monkeypatch):
    """Issue 22 item 5 as it was: Paddle keeps the master weights it is given, and its first step after the
    resume reads `.name` from each. restore_optimizer makes them named tensors (the test above)."""
    state, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run"))
    with paddle.utils.unique_name.guard():
        first_step_state(state.optimizer, state.model)
    saved = {
        k: (
            v.numpy()
            if isinstance(v, paddle.Tensor)
            else {n: t.numpy() for n, t in v.items()}
            if k == "master_weights"
            else v
        )
        for k, v in state.optimizer.state_dict().items()
    }
    resumed, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run"))
    resumed.optimizer.set_state_dict(saved)
    with paddle.utils.unique_name.guard(), pytest.raises(AttributeError, match="name"):
        first_step_state(resumed.optimizer, resumed.model)


def test_o2_weights_leave_training_as_float32_that_eval_and_export_load(tmp_path, monkeypatch):
    from senet.export import export
    from senet.train import evaluate

    cfg = o2_cfg(tmp_path / "run")
    state, val_loader, _ = o2_setup(monkeypatch, cfg)
    weights = str(tmp_path / "model.safetensors")
    ckpt.save_safetensors(inner(state.model), weights, {"arch": "se_resnet20", "config": cfg})
    with open(weights, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    plain = copy.deepcopy(cfg)
    plain["model"]["weights"] = weights
    model = build_model(plain)
    load_weights(model, weights, expected_arch="se_resnet20")  # as tools/eval.py and model.weights do
    for k, v in model.state_dict().items():
        expected = inner(state.model).state_dict(use_hook=False)[k].astype("float32").numpy()
        np.testing.assert_array_equal(v.numpy(), expected, err_msg=k)
    result = evaluate(model, val_loader, plain, amp={"enabled": True, "level": "O2", "dtype": "float16", "eval": False})
    assert result["images"] == 24 and np.isfinite(result["loss"])  # fp32 weights: an fp32 eval on this CPU
    info = export(plain, str(tmp_path / "export"), ["paddle", "safetensors"])
    assert set(info["files"]) == {"paddle", "safetensors"}


def test_bf16_weights_are_written_as_float32_not_as_their_uint16_bits(tmp_path):
    """numpy has no bfloat16: a bf16 tensor's .numpy() is its bits as uint16, which became a U16 tensor our
    own reader refused. The writer widens fp16 and bf16 exactly on the device first."""
    from paddle.amp.auto_cast import amp_initialize

    model = build_model(load_config(None, TINY))
    amp_initialize(models=[model], dtype="bfloat16", excluded_layers=None)  # as O2 casts, without save_dtype
    bf16 = model.state_dict()["stem.0.weight"]
    assert bf16.dtype == paddle.bfloat16 and bf16.numpy().dtype == np.uint16  # the trap
    path = str(tmp_path / "w.safetensors")
    ckpt.save_safetensors(model, path)
    tensors, _ = read_safetensors(path)
    bits = bf16.numpy().astype(np.uint32) << 16  # bf16 is the top half of a float32
    np.testing.assert_array_equal(tensors["stem.0.weight"], bits.view(np.float32))
    with pytest.raises(CheckpointError, match="'x' is paddle.int64, not a float"):
        ckpt._float32_array("x", paddle.to_tensor([1, 2]))


def test_an_fp16_checkpoint_from_before_save_dtype_still_loads_into_the_fp32_model(tmp_path):
    cfg = load_config(None, TINY)
    model = build_model(cfg)
    state = {
        "model": {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()},
        "optimizer": {},
        "lr_scheduler": {},
        "epoch": 1,
        "batch_in_epoch": 0,
        "global_step": 4,
        "rng": ckpt.rng_state(),
        "history": [],
        "config": cfg,
    }
    path = str(tmp_path / "old.pdparams")
    save_checkpoint(path, state)
    assert {v.dtype for v in ckpt.extract_model_state(path).values()} == {np.dtype(np.float32)}
    fresh = build_model(cfg)
    load_weights(fresh, path, expected_arch="se_resnet20")
    w = fresh.state_dict()["stem.0.weight"]
    assert w.dtype == paddle.float32
    np.testing.assert_array_equal(w.numpy(), state["model"]["stem.0.weight"].astype(np.float32))
    # bf16, which paddle.save stores as its uint16 bits, is read as bf16 (Paddle's convention), not as integers
    shape = state["model"]["stem.0.weight"].shape
    state["model"]["stem.0.weight"] = np.full(shape, 16256, np.uint16)  # bf16 bits of 1.0
    save_checkpoint(path, state)
    assert np.all(ckpt.extract_model_state(path)["stem.0.weight"] == 1.0)
    load_weights(fresh, path, expected_arch="se_resnet20")
    assert np.all(fresh.state_dict()["stem.0.weight"].numpy() == 1.0)
    with pytest.raises(CheckpointError, match="'stem.0.weight' is paddle.int32, not a float"):
        ckpt.set_weights(fresh, {"stem.0.weight": np.ones(shape, np.int32)})


# ---------------------------------------------------------------- item 4: EMA under O2


def test_ema_of_an_o2_model_averages_the_master_weights_and_copies_into_fp16(tmp_path, monkeypatch):
    state, _, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run", "train.ema.enabled=true", "train.ema.decay=0.5"))
    model, ema = inner(state.model), state.ema
    # The failure of issue 22: the fp32 shadow into a copy of the fp16 model, which Paddle's set_value refuses.
    with pytest.raises(AssertionError, match="dtype not match"):
        copy.deepcopy(model).set_state_dict(ema.state_dict())
    with paddle.utils.unique_name.guard():
        first_step_state(state.optimizer, state.model)
    masters = state.optimizer._master_weights
    conv = model.stem[0].weight
    with paddle.no_grad():  # a master weight that fp16 cannot hold, as after an update smaller than its rounding
        paddle.assign(conv.astype("float32") + 1e-4, output=masters[conv.name])
    before = ema.shadow["stem.0.weight"].numpy().copy()
    ema.update(model)
    expected = 0.5 * before + 0.5 * masters[conv.name].numpy()
    np.testing.assert_allclose(ema.shadow["stem.0.weight"].numpy(), expected, rtol=1e-6, atol=0)
    rounded = 0.5 * before + 0.5 * conv.astype("float32").numpy()
    assert np.abs(ema.shadow["stem.0.weight"].numpy() - rounded).max() > 4e-5  # not the fp16-rounded weights
    bn = ema.shadow["stem.1.weight"].numpy()  # an fp32 parameter (no master weight) averages the parameter itself
    copy_model = ema.copy_into(model)
    assert copy_model.stem[0].weight.dtype == paddle.float16 and copy_model.stem[1].weight.dtype == paddle.float32
    np.testing.assert_array_equal(
        copy_model.stem[0].weight.numpy(), ema.shadow["stem.0.weight"].astype("float16").numpy()
    )
    np.testing.assert_array_equal(copy_model.stem[1].weight.numpy(), bn)


def test_ema_is_built_from_the_fp32_weights_before_decorate(tmp_path, monkeypatch):
    """The shadow starts from the exact initial weights, not from their fp16 rounding."""
    cfg = o2_cfg(tmp_path / "run", "train.ema.enabled=true")
    with paddle.utils.unique_name.guard():
        paddle.seed(cfg["train"]["seed"])
        fp32 = build_model(cfg)
    state, _, _ = o2_setup(monkeypatch, cfg)
    np.testing.assert_array_equal(state.ema.shadow["stem.0.weight"].numpy(), fp32.stem[0].weight.numpy())


# ---------------------------------------------------------------- item 3: the eval of an O2 model


def test_an_o2_model_is_evaluated_in_its_amp_dtype_whatever_amp_eval_says(tmp_path, monkeypatch):
    from senet import engine as engine_mod

    state, val_loader, _ = o2_setup(monkeypatch, o2_cfg(tmp_path / "run"))
    fp32_amp = {"enabled": True, "level": "O2", "dtype": "float16", "eval": False}
    assert eval_amp(state.model, fp32_amp) == {**fp32_amp, "eval": True}
    fp32_model = build_model(load_config(None, TINY))
    assert eval_amp(fp32_model, fp32_amp) is fp32_amp and eval_amp(fp32_model, None) is None
    seen = []

    def forward_loss(parts, images, labels, train=True):  # what evaluate hands the forward pass
        seen.append((parts.amp, train))
        n = labels.shape[0]
        return paddle.zeros([n, 4]), paddle.zeros([])

    monkeypatch.setattr(engine_mod, "forward_loss", forward_loss)
    engine_mod.evaluate(state.model, val_loader, state.cfg, amp=state.amp)
    assert seen and all(amp["eval"] and amp["dtype"] == "float16" and not train for amp, train in seen)


# ---------------------------------------------------------------- item 9: RNG states and the number of GPUs


class FakeGenerator:
    def __init__(self, values):
        self.values = tuple(values)

    def get_state(self):
        return ckpt._generator_state(self.values)

    def set_state(self, state):
        self.values = state.__getstate__()


def gpu_state(device, seed):
    """A GeneratorState's plain values, as one of GPU `device` would carry them."""
    paddle.seed(seed)
    return (device,) + tuple(paddle.get_rng_state()[0].__getstate__()[1:])


def gpus(monkeypatch, current, count):
    """This process computes on GPU `current` of `count` visible ones (stand-ins for their generators)."""
    generators = {i: FakeGenerator(gpu_state(i, 100 + i)) for i in range(count)}
    monkeypatch.setattr(ckpt, "_current_gpu", lambda: current)
    monkeypatch.setattr(ckpt, "_cuda_generator", lambda i: generators[i])
    return generators


def test_rng_state_holds_this_process_gpu_only_and_restores_with_any_gpu_count(monkeypatch):
    generators = gpus(monkeypatch, current=1, count=4)
    saved = ckpt.rng_state()
    assert set(saved["paddle"]) == {"cpu", "gpu"} and saved["paddle"]["cpu"][0] == -1
    assert tuple(saved["paddle"]["gpu"]) == generators[1].values  # GPU 1's state, not four
    expected_cpu = tuple(saved["paddle"]["cpu"])
    paddle.seed(7)  # move the CPU generator away
    generators = gpus(monkeypatch, current=0, count=2)  # resumed on a machine with two GPUs
    untouched = generators[1].values
    ckpt.set_rng_state(saved)
    assert generators[0].values == tuple(saved["paddle"]["gpu"]) and generators[1].values == untouched
    assert tuple(paddle.base.core.default_cpu_generator().get_state().__getstate__()) == expected_cpu


def test_rng_states_between_cpu_and_gpu_and_of_the_earlier_format(monkeypatch):
    monkeypatch.setattr(ckpt, "_current_gpu", lambda: None)
    on_cpu = ckpt.rng_state()
    assert on_cpu["paddle"]["gpu"] is None
    generators = gpus(monkeypatch, current=0, count=1)
    seeded = generators[0].values
    ckpt.set_rng_state(on_cpu)  # a CPU checkpoint on a GPU: the GPU generator keeps its seed
    assert generators[0].values == seeded
    # paddle.get_rng_state()'s list, as checkpoints held it: from a 4-GPU process, on GPU 2 now
    old = {**on_cpu, "paddle": [gpu_state(i, 200 + i) for i in range(4)]}
    generators = gpus(monkeypatch, current=2, count=3)
    ckpt.set_rng_state(old)
    assert generators[2].values == old["paddle"][2]
    # from a CPU: its one CPU state, which a CPU run now restores exactly
    monkeypatch.setattr(ckpt, "_current_gpu", lambda: None)
    paddle.seed(3)
    old = {**on_cpu, "paddle": [paddle.get_rng_state()[0].__getstate__()]}
    first = paddle.rand([4]).numpy()
    ckpt.set_rng_state(old)
    np.testing.assert_array_equal(paddle.rand([4]).numpy(), first)


def test_rng_state_round_trips_on_this_cpu():
    saved = ckpt.rng_state()
    first = (paddle.rand([3]).numpy(), np.random.rand(3))
    ckpt.set_rng_state(saved)
    second = (paddle.rand([3]).numpy(), np.random.rand(3))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- item 10: silent or slow choices


def cfg_with(*extra):
    return load_config(None, list(extra))


@pytest.mark.parametrize(
    "dtype, capability, cuda, trains",
    [
        ("bfloat16", (7, 5), "12.6", False),
        ("bfloat16", (8, 0), "12.6", True),
        ("bfloat16", (8, 6), "10.2", False),
        ("float16", (6, 1), "12.6", False),
        ("float16", (7, 0), "11.8", True),
    ],
)
def test_an_amp_dtype_the_gpu_lacks_is_said_and_recorded_as_fp32(monkeypatch, dtype, capability, cuda, trains):
    gpu_device(monkeypatch, capability, cuda)
    env = dev.device_notices(cfg_with("train.amp.enabled=true", "train.amp.level=O2", f"train.amp.dtype={dtype}"))
    assert env["amp"]["enabled"] is trains
    assert env["precision"] == (f"amp-O2-{dtype}" if trains else "fp32")
    said = [n for n in env["notices"] if "trains in fp32" in n]
    assert bool(said) is not trains
    if said:
        assert f"{capability[0]}.{capability[1]}" in said[0] or f"CUDA {cuda}" in said[0]
        assert ("train.amp.dtype=float16 keeps mixed precision" in said[0]) is (
            dtype == "bfloat16" and capability[0] >= 7
        )


def test_nhwc_in_fp32_on_a_gpu_says_what_it_costs(monkeypatch):
    gpu_device(monkeypatch)
    fp32 = dev.device_notices(cfg_with("train.amp.enabled=false", "train.data_format=NHWC"))
    assert fp32["data_format"] == "NHWC"
    assert [n for n in fp32["notices"] if "two transposes" in n and "train.data_format=NCHW" in n]
    amp = dev.device_notices(cfg_with("train.amp.enabled=true", "train.data_format=NHWC"))
    assert not [n for n in amp["notices"] if "transposes" in n]


def test_o2_with_fp32_eval_says_the_eval_runs_in_the_amp_dtype(monkeypatch):
    gpu_device(monkeypatch)
    env = dev.device_notices(cfg_with("train.amp.enabled=true", "train.amp.level=O2"))
    assert [n for n in env["notices"] if n.startswith("train.amp.eval=false under O2")]
    env = dev.device_notices(cfg_with("train.amp.enabled=true", "train.amp.level=O2", "train.amp.eval=true"))
    assert not [n for n in env["notices"] if "under O2" in n]


def test_cudnn_flags_are_set_on_a_gpu_before_the_model_is_built(tmp_path, monkeypatch):
    from senet import train as train_mod

    order = []
    gpu_device(monkeypatch)
    monkeypatch.setattr(paddle, "set_flags", lambda flags: order.append(("set_flags", dict(flags))))
    monkeypatch.setattr(train_mod, "apply_cudnn_flags", dev.apply_cudnn_flags)  # the real one, recorded below
    real_build = train_mod.build_model
    monkeypatch.setattr(train_mod, "build_model", lambda cfg: order.append(("build_model",)) or real_build(cfg))
    monkeypatch.delenv("FLAGS_cudnn_exhaustive_search", raising=False)
    monkeypatch.setenv("FLAGS_cudnn_batchnorm_spatial_persistent", "0")  # the user's choice wins
    with paddle.utils.unique_name.guard():
        train_mod.setup(load_config(None, [*TINY, "train.amp.enabled=false", f"output_dir={tmp_path}"]))
    assert order[0] == ("set_flags", {"FLAGS_cudnn_exhaustive_search": True}) and order[1] == ("build_model",)
    order.clear()
    monkeypatch.setattr(dev, "has_gpu", lambda: False)  # on a CPU: none
    with paddle.utils.unique_name.guard():
        train_mod.setup(load_config(None, [*TINY, "train.amp.enabled=false", f"output_dir={tmp_path}"]))
    assert order == [("build_model",)]


def test_cudnn_flags_name_the_reference_settings(monkeypatch):
    for name in dev.CUDNN_FLAGS:
        monkeypatch.delenv(name, raising=False)
    assert dev.cudnn_flags() == {
        "FLAGS_cudnn_exhaustive_search": True,
        "FLAGS_cudnn_batchnorm_spatial_persistent": True,
    }


# ---------------------------------------------------------------- item 10: the device inference runs on


def test_inference_devices_parse_and_resolve_to_the_rank_gpu_or_the_one_named(monkeypatch, capsys):
    from senet import inference

    assert inference.parse_device("cpu") == ("cpu", None)
    assert inference.parse_device("gpu") == ("gpu", None) and inference.parse_device("gpu:3") == ("gpu", 3)
    for bad in ("gpu:", "gpu:x", "cuda", "cpu:0", "gpu:-1"):
        with pytest.raises(ValueError, match="use cpu, gpu .* or gpu:N"):
            inference.parse_device(bad)
    monkeypatch.setattr(dev, "has_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(dev, "local_gpu", lambda: 2)  # rank 2's GPU under paddle.distributed.launch
    assert inference._usable_gpu("gpu", None) == 2
    assert inference._usable_gpu("gpu", 3) == 3 and inference._usable_gpu("cpu", None) is None
    with pytest.raises(ValueError, match="gpu:4 asked for, but Paddle sees 4 GPU"):
        inference._usable_gpu("gpu", 4)
    monkeypatch.setattr(dev, "has_gpu", lambda: False)
    assert inference._usable_gpu("gpu", 1) is None
    assert "no CUDA GPU available to Paddle; running on the CPU" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported as the trainer's run would be (PIR model.json, ONNX)."""
    from senet.export import export

    out = tmp_path_factory.mktemp("export")
    cfg = load_config(os.path.join(ROOT, "configs/demo/se_resnet20_digits.yaml"), [f"output_dir={out}"])
    paddle.seed(0)
    model = build_model(cfg)
    model.eval()
    export(cfg, str(out / "model"), ["paddle", "onnx"], model=model)
    return str(out / "model")


class FakeConfig:
    """paddle.inference.Config, recording what the Predictor asks of it."""

    calls: list = []

    def __init__(self, *files):
        FakeConfig.calls = [("Config", files)]

    def __getattr__(self, name):
        return lambda *a, **k: FakeConfig.calls.append((name, a))


class FakeHandle:
    def reshape(self, shape):
        self.shape = shape

    def copy_from_cpu(self, x):
        self.x = x

    def copy_to_cpu(self):
        return np.zeros((self.shape[0], 10), np.float32)


class FakePredictor:
    def __init__(self):
        self.handle = FakeHandle()

    def get_input_names(self):
        return ["x"]

    def get_output_names(self):
        return ["y"]

    def get_input_handle(self, name):
        return self.handle

    def get_output_handle(self, name):
        return self.handle

    def run(self):
        pass


def test_paddle_inference_on_a_gpu_uses_the_chosen_gpu_and_says_tensorrt_does_not_apply(exported, monkeypatch, capsys):
    from paddle import inference as paddle_inference

    from senet.inference import Predictor

    monkeypatch.setattr(dev, "has_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(paddle_inference, "Config", FakeConfig)
    monkeypatch.setattr(paddle_inference, "create_predictor", lambda config: FakePredictor())
    monkeypatch.setattr(paddle_inference, "get_trt_compile_version", lambda: (8, 6, 1))
    monkeypatch.setattr(paddle_inference, "get_trt_runtime_version", lambda: (8, 6, 1))
    p = Predictor(exported, "paddle", device="gpu:1")
    names = [c[0] for c in FakeConfig.calls]
    assert ("enable_use_gpu", (256, 1)) in FakeConfig.calls and "disable_gpu" not in names
    assert "enable_tensorrt_engine" not in names and p.max_batch is None
    assert p.backend == "Paddle Inference, CUDA, GPU 1"
    err = capsys.readouterr().err
    assert "no TensorRT for model.json: Paddle 3.3 applies enable_tensorrt_engine to .pdmodel graphs only" in err
    monkeypatch.setattr(paddle_inference, "get_trt_compile_version", lambda: (0, 0, 0))
    Predictor(exported, "paddle", device="gpu")  # without TensorRT: no notice for a graph it never applied to
    assert "TensorRT" not in capsys.readouterr().err


def test_predict_runs_batches_beyond_an_engine_limit_in_parts(exported):
    from senet.inference import Predictor

    p = Predictor(exported, "paddle")
    assert p.backend == "Paddle Inference, oneDNN" and p.max_batch is None
    images = np.random.default_rng(0).integers(0, 256, (5, p.crop, p.crop, 3), dtype=np.uint8)
    whole = p.predict(images)
    calls = []
    run = p._run
    p._run = lambda x: calls.append(len(x)) or run(x)
    p.max_batch = 2  # as a TensorRT profile of 1 to 2 images would allow
    parts = p.predict(images)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)  # a batch's rows are independent in eval


# ---------------------------------------------------------------- item 10 and item 7: bench --full's labels


def test_bench_full_labels_the_paper_batch_and_stays_within_the_tensorrt_profile():
    from senet.bench.options import default_options, full_batch_notice, resolve_variants
    from senet.inference import TRT_MAX_BATCH

    full = default_options(full=True)
    assert full.train_batch == 256 and 1 <= full.infer_batch <= TRT_MAX_BATCH
    said = full_batch_notice(full, gpu=True)
    assert said.startswith(
        "train batch 256 on one GPU: the paper's global batch, which Hu et al. (Sec. 4) split over 8 GPUs (32 each)"
    )
    notices: list[str] = []
    resolve_variants(full, gpu=False, notices=notices)
    assert notices[0].startswith("train batch 256 on this CPU: the paper's global batch")
    assert full_batch_notice(default_options(), gpu=True) is None


# ---------------------------------------------------------------- the trainer's data wait


class SlowLoader:
    """The real loader, with `delay` seconds before each batch: a loader that cannot keep up."""

    def __init__(self, loader, delay):
        self.loader, self.delay = loader, delay

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


class ReadyLoader(SlowLoader):
    """Every batch of the epoch loaded before the first is asked for: next() never waits."""

    def __iter__(self):
        return iter(list(self.loader))


def with_loader(monkeypatch, wrap):
    from senet import train as train_mod

    real = train_mod.build_loader
    monkeypatch.setattr(
        train_mod,
        "build_loader",
        lambda cfg, split, **k: wrap(real(cfg, split, **k)) if split == "train" else real(cfg, split, **k),
    )


def test_a_slow_loader_shows_as_data_wait_with_a_notice_naming_the_remedies(tmp_path, monkeypatch):
    delay = 0.4  # seconds a batch; a step of this tiny model takes 0.1 to 0.5 s on a 2-core CPU
    with_loader(monkeypatch, lambda loader: SlowLoader(loader, delay))
    out = tmp_path / "run"
    metrics = fit_here(tiny_cfg(out))
    waits = [h["data_wait_pct"] for h in metrics["history"]]
    assert len(waits) == 2 and all(w > 20 for w in waits), waits
    for h in metrics["history"]:  # at least the 4 delays of the epoch's 4 batches, within its wall time
        assert 100 * 4 * delay / h["epoch_time_s"] <= h["data_wait_pct"] <= 100, h
    assert metrics["data_wait_pct"] == pytest.approx(np.mean(waits))
    log = (out / "train.log").read_text()
    assert log.count("data wait: ") == 2 and "% of step time" in log
    notices = [line for line in log.splitlines() if "notice: data wait" in line]
    assert len(notices) == 1  # once a run
    for remedy in ("data.num_workers (now 0)", "data.loader: dali", "scripts/prepare_imagenet.py --short-side"):
        assert remedy in notices[0]
    from visualdl import LogReader

    files = [f for f in os.listdir(out / "vdl") if f.startswith("vdlrecords")]
    reader = LogReader(file_path=str(out / "vdl" / files[0]))
    assert [round(r.value, 3) for r in reader.get_data("scalar", "train/data_wait_pct")] == [round(w, 3) for w in waits]
    assert read_json(out / "metrics.json")["precision"] == "fp32"


def test_a_loader_with_every_batch_ready_gives_no_notice(tmp_path, monkeypatch):
    with_loader(monkeypatch, lambda loader: ReadyLoader(loader, 0))
    out = tmp_path / "run"
    metrics = fit_here(tiny_cfg(out))
    assert all(h["data_wait_pct"] < 20 for h in metrics["history"]), metrics["history"]
    assert "notice: data wait" not in (out / "train.log").read_text()


def test_the_start_line_and_metrics_name_the_precision_really_trained(tmp_path):
    out = tmp_path / "run"
    metrics = fit_here(tiny_cfg(out, "train.amp.enabled=true", "train.amp.dtype=bfloat16", "train.epochs=1"))
    assert metrics["precision"] == "fp32"  # a CPU: AMP falls back, and says so
    log = (out / "train.log").read_text()
    assert "AMP requested but no GPU" in log and "for a global batch of 16, fp32 NCHW" in log
