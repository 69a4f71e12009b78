"""amp=bf16 on the CPU: autocast around the forward, fp32 parameters, checkpoints and resume,
and the refusal on a CPU without native bfloat16 (docs/training.md, "Mixed precision on the CPU")."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from lds.training import load_checkpoint, load_train_config, read_run_config, train
from lds.training import loop
from lds.training.logging import read_metrics
from tests.test_monet import TINY_OVERRIDES, one_torch_thread  # noqa: F401 (fixture)
from tests.test_mulmon import make_views_store

H = W = 16
native_bf16 = pytest.mark.skipif(not loop.cpu_has_native_bf16(),
                                 reason="this CPU has no native bf16 (amp=bf16 is refused here)")


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 4):
        self.images = torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def monet_cfg(*extra: str):
    return load_train_config("monet", overrides=TINY_OVERRIDES + [
        "optim.lr=1e-3", "log.every=1", "log.checkpoint_every=2", "log.tensorboard=false",
        "lds.enabled=true", "amp=bf16", *extra])


@pytest.fixture
def forward_precision(monkeypatch):
    """Records, for every forward the loop runs, (CPU autocast on, its dtype, loss dtype)."""
    seen = []
    build = loop.build_model

    def recording_build(name, cfg):
        model = build(name, cfg)
        forward = model.forward

        def recorded(*args, **kwargs):
            out = forward(*args, **kwargs)
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                         out.loss.dtype))
            return out

        model.forward = recorded
        return model

    monkeypatch.setattr(loop, "build_model", recording_build)
    return seen


def assert_fp32_state(state: dict) -> None:
    floats = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
    assert floats and all(d == torch.float32 for d in floats.values()), floats


@native_bf16
def test_monet_trains_under_bf16_autocast_with_fp32_parameters_and_resumes(tmp_path, forward_precision):
    run = tmp_path / "run"
    result = train(monet_cfg("optim.steps=2"), run, dataset=Images(), progress=False)
    assert result.step == 2 and result.checkpoint is not None
    # every forward ran under CPU autocast to bf16, and the loss reaching backward is fp32
    assert forward_precision == [(True, torch.bfloat16, torch.float32)] * 2
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "nll", "kl_z", "lds", "grad_norm"))
    checkpoint = load_checkpoint(run / "checkpoints")
    assert checkpoint.step == 2
    assert_fp32_state(checkpoint.model_state)
    assert_fp32_state({k: v for k, v in checkpoint.optimizer_state["state"][0].items()
                       if isinstance(v, torch.Tensor)})
    assert read_run_config(run).amp == "bf16"                  # the saved config keeps it

    resumed = train(read_run_config(run, ["optim.steps=3"]), run, dataset=Images(), resume=True,
                    progress=False)
    assert resumed.step == 3 and load_checkpoint(run / "checkpoints").step == 3
    assert forward_precision[-1] == (True, torch.bfloat16, torch.float32)    # resumed in bf16 too
    assert math.isfinite(read_metrics(run)[-1]["loss"])


@native_bf16
def test_mulmon_trains_under_bf16_autocast_and_resumes(tmp_path, forward_precision):
    store, run = tmp_path / "views.zarr", tmp_path / "run"
    make_views_store(store)
    overrides = ["model.height=32", "model.width=32", "model.num_slots=3", "model.num_iterations=2",
                 "model.num_views=3", "optim.batch_size=2", "log.every=1", "log.checkpoint_every=2",
                 "log.tensorboard=false", "lds.enabled=true", "amp=bf16", f"data={store}"]
    result = train(load_train_config("mulmon", overrides=overrides + ["optim.steps=2"]), run,
                   progress=False)
    assert result.step == 2
    assert forward_precision == [(True, torch.bfloat16, torch.float32)] * 2
    rows = read_metrics(run)
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "nll", "kl", "query_nll", "lds"))
    assert_fp32_state(load_checkpoint(run / "checkpoints").model_state)
    train(read_run_config(run, ["optim.steps=3"]), run, resume=True, progress=False)
    assert load_checkpoint(run / "checkpoints").step == 3


def test_a_cpu_without_native_bf16_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="native bfloat16.*emulated and slower than fp32"):
        train(monet_cfg("optim.steps=1"), tmp_path / "run", dataset=Images(), progress=False)
    assert not (tmp_path / "run").exists()
    # amp=off is unaffected by the probe
    train(monet_cfg("optim.steps=1", "amp=off"), tmp_path / "off", dataset=Images(), progress=False)
    assert load_checkpoint(tmp_path / "off" / "checkpoints").step == 1


def test_cuda_amp_does_not_consult_the_cpu_probe(monkeypatch):
    def probe():
        raise AssertionError("the CPU probe decides only CPU runs")

    monkeypatch.setattr(loop, "cpu_has_native_bf16", probe)
    loop.check_amp_supported("bf16", torch.device("cuda"))        # the CUDA path as before
    with pytest.raises(ConfigError, match="unknown amp mode"):
        loop.check_amp_supported("fp16", torch.device("cpu"))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(),
                    reason="the instruction-set flags are read from /proc/cpuinfo on x86 Linux")
def test_the_probe_follows_the_cpus_bf16_instructions():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    expected = torch.backends.mkldnn.is_available() and bool({"amx_bf16", "avx512_bf16"} & flags)
    assert loop.cpu_has_native_bf16() is expected
