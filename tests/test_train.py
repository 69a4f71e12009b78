"""Training: config, exact resume, the NaN guard, checkpoints, logs, and `ldsrig train monet`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from common.errors import ConfigError, UserError
from lds.training import (NonFiniteLossError, RunError, default_train_config, list_checkpoints,
                          load_checkpoint, load_run, load_train_config, read_run_config,
                          save_checkpoint, train)
from lds.training.logging import read_metrics
from lds.training.loop import StepBatchSampler, make_optimizer
from tests.test_monet import TINY_OVERRIDES, one_torch_thread, tiny_model  # noqa: F401 (fixture)

H = W = 16


class ImageList(torch.utils.data.Dataset):
    """A map-style dataset of dicts, like ImageDataset; ``nan_after`` poisons later reads."""

    def __init__(self, images: torch.Tensor, nan_after: int | None = None):
        self.images, self.nan_after, self.reads = images, nan_after, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        image = self.images[i].clone()
        if self.nan_after is not None and self.reads > self.nan_after:
            image[0, 0, 0] = float("nan")
        return {"image": image, "label_map": torch.zeros(H, W, dtype=torch.long),
                "amodal_masks": torch.zeros(i + 1, H, W, dtype=torch.bool)}  # ragged: not collated


def images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1))


def tiny_cfg(*extra: str):
    return load_train_config("monet", overrides=TINY_OVERRIDES + [
        "optim.lr=1e-3", "log.every=2", "log.tensorboard=false", *extra])


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_paper_defaults_and_overrides(tmp_path):
    cfg = default_train_config("monet")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.batch_size) == ("rmsprop", 3e-4, 40)
    assert (cfg.optim.steps, cfg.optim.grad_clip) == (600_000, 5.0)
    assert (cfg.lds.enabled, cfg.lds.weight, cfg.lds.sigma) == (False, 0.5, 0.1)
    assert cfg.model.name == "monet" and cfg.model.num_slots == 7
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(yaml.safe_dump({"optim": {"lr": 1e-4}, "lds": {"enabled": True}}))
    cfg = load_train_config("monet", yaml_path, ["model.num_slots=9", "optim.lr=2e-4"])
    assert cfg.optim.lr == 2e-4 and cfg.model.num_slots == 9      # overrides beat the file
    assert cfg.lds.enabled and cfg.lds.weight == 0.5 and not hasattr(cfg.model, "lds_weight")
    with pytest.raises(ConfigError, match="unknown"):
        load_train_config("monet", overrides=["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_train_config("monet", overrides=["optim.lr=fast"])


def test_sampler_is_a_pure_function_of_the_step():
    full = list(StepBatchSampler(5, 3, seed=4, start_step=0, end_step=10))
    assert list(StepBatchSampler(5, 3, seed=4, start_step=6, end_step=10)) == full[6:]
    stream = [i for batch in full for i in batch]
    for epoch in range(6):                                   # every epoch is a permutation
        assert sorted(stream[epoch * 5:(epoch + 1) * 5]) == list(range(5))
    assert stream[:5] != stream[5:10]                        # reshuffled per epoch
    assert list(StepBatchSampler(5, 3, seed=5, start_step=0, end_step=10)) != full


def test_resume_continues_exactly(tmp_path):
    """3 steps, stop, resume to 7 == 7 uninterrupted steps, bit for bit (params, optimiser,
    data order straddling epochs, reparameterisation noise)."""
    data = ImageList(images(5))
    straight = tiny_cfg("optim.steps=7", "lds.enabled=true", "log.checkpoint_every=100")
    train(straight, tmp_path / "straight", dataset=data, progress=False)
    first = tiny_cfg("optim.steps=3", "lds.enabled=true", "log.checkpoint_every=100")
    train(first, tmp_path / "split", dataset=data, progress=False)
    assert list_checkpoints(tmp_path / "split" / "checkpoints") == [3]
    resumed = read_run_config(tmp_path / "split", ["optim.steps=7"])
    result = train(resumed, tmp_path / "split", dataset=data, resume=True, progress=False)
    assert result.step == 7
    a = load_checkpoint(tmp_path / "straight" / "checkpoints")
    b = load_checkpoint(tmp_path / "split" / "checkpoints")
    assert a.step == b.step == 7
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
    for index, entry in a.optimizer_state["state"].items():
        for name, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.optimizer_state["state"][index][name]))
    # The log holds each step once, and the same values as the uninterrupted run.
    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in rows_b] == [2, 3, 4, 6, 7]
    by_step = {r["step"]: r for r in rows_a}
    assert rows_b[-1]["loss"] == by_step[7]["loss"]


def test_time_limit_stops_cleanly_and_resume_continues_exactly(tmp_path):
    """time_limit_minutes: the run stops at the step where the limit is passed with a log row
    and a checkpoint there, and --resume continues bit for bit as if never stopped."""
    data = ImageList(images(5))
    straight = tiny_cfg("optim.steps=4", "lds.enabled=true", "log.checkpoint_every=100")
    train(straight, tmp_path / "straight", dataset=data, progress=False)
    limited = tiny_cfg("optim.steps=4", "lds.enabled=true", "log.checkpoint_every=100",
                       "log.every=100", "time_limit_minutes=1e-9")   # passed after step 1
    result = train(limited, tmp_path / "split", dataset=data, progress=False)
    assert result.stopped_by_time_limit and result.step == 1
    assert list_checkpoints(tmp_path / "split" / "checkpoints") == [1]
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [1]
    # what the run is may not change on resume: the LDS prior's latents neither
    with pytest.raises(RunError, match="lds.latents 'sample' -> 'mean'"):
        train(read_run_config(tmp_path / "split", ["lds.latents=mean"]), tmp_path / "split",
              dataset=data, resume=True, progress=False)
    resumed = read_run_config(tmp_path / "split", ["time_limit_minutes=0"])
    result = train(resumed, tmp_path / "split", dataset=data, resume=True, progress=False)
    assert result.step == 4 and not result.stopped_by_time_limit
    a = load_checkpoint(tmp_path / "straight" / "checkpoints").model_state
    b = load_checkpoint(tmp_path / "split" / "checkpoints").model_state
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nan_guard_stops_and_keeps_the_last_good_state(tmp_path):
    batch = 2
    # Step 4's batch holds a NaN pixel (+1: train() first reads one item to check the size).
    data = ImageList(images(5), nan_after=3 * batch + 1)
    cfg = tiny_cfg("optim.steps=10", "log.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match="step 4") as info:
        train(cfg, tmp_path / "run", dataset=data, progress=False)
    assert isinstance(info.value, UserError)
    assert "step_0000003.safetensors" in str(info.value)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert list_checkpoints(ckpt_dir) == [2, 3]
    # The saved state is exactly a clean 3-step run: the bad update was never applied.
    clean = tiny_cfg("optim.steps=3", "log.checkpoint_every=100")
    train(clean, tmp_path / "clean", dataset=ImageList(images(5)), progress=False)
    guarded = load_checkpoint(ckpt_dir, 3).model_state
    reference = load_checkpoint(tmp_path / "clean" / "checkpoints", 3).model_state
    for key in reference:
        assert torch.equal(guarded[key], reference[key]), key
        assert torch.isfinite(guarded[key]).all()


def test_checkpoint_round_trip_without_pickle(tmp_path):
    model = tiny_model()
    cfg = tiny_cfg()
    optimizer = make_optimizer(cfg, model.parameters())
    model({"image": images(2)}).loss.backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 12, model, optimizer, {"seed": 3})
    assert path.name == "step_0000012.safetensors"
    with safe_open(str(path), "pt") as fh:                   # plain safetensors, no pickle
        assert set(fh.keys()) == set(model.state_dict())
        assert fh.metadata()["step"] == "12"
    state = json.loads((tmp_path / "state_0000012.json").read_text())
    assert state["step"] == 12 and state["seed"] == 3
    loaded = load_checkpoint(tmp_path)
    fresh = tiny_model(seed=99)
    fresh.load_state_dict(loaded.model_state)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    fresh_opt = make_optimizer(cfg, fresh.parameters())
    fresh_opt.load_state_dict(loaded.optimizer_state)
    for p_old, p_new in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(optimizer.state[p_old]["square_avg"], fresh_opt.state[p_new]["square_avg"])
    # A checkpoint without its JSON (a crash mid-write) is ignored.
    (tmp_path / "step_0000020.safetensors").write_bytes(b"partial")
    assert list_checkpoints(tmp_path) == [12]


def test_load_run_gives_an_eval_model_and_its_config(tmp_path):
    data = ImageList(images(4))
    train(tiny_cfg("optim.steps=2", "lds.enabled=true"), tmp_path / "run", dataset=data, progress=False)
    model, cfg = load_run(tmp_path / "run")
    assert not model.training and cfg.model.name == "monet" and cfg.lds.enabled
    assert cfg.lds.weight == 0.5 and cfg.optim.steps == 2
    # a config.yaml saved before LDS left the model configs still loads (its copies are dropped)
    import yaml as _yaml

    saved = _yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    saved["model"].update(lds_weight=0.5, lds_sigma=0.1)
    (tmp_path / "run" / "config.yaml").write_text(_yaml.safe_dump(saved))
    assert load_run(tmp_path / "run")[1].lds.enabled
    with torch.no_grad():
        out = model({"image": images(2)})
    out.check(2, 3, H, W)
    with pytest.raises(RunError, match="already exists"):
        train(tiny_cfg("optim.steps=2"), tmp_path / "run", dataset=data, progress=False)
    with pytest.raises(RunError, match="not a training run"):
        load_run(tmp_path)


def test_image_size_mismatch_is_a_clear_error(tmp_path):
    data = ImageList(torch.rand(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="32x32"):
        train(tiny_cfg("optim.steps=1"), tmp_path / "run", dataset=data, progress=False)


def make_store(path, scenes: int = 2, views: int = 3) -> None:
    from datasets.store import SceneStore

    rng = np.random.default_rng(0)
    with SceneStore.create(path, height=H, width=W, ground_truth=True, max_objects=3,
                           attrs={"source": "test"}) as store:
        for s in range(scenes):
            scene_id = f"scene_{s}"
            store.add_scene(scene_id, {"source": "test", "objects": [{"shape": "cube"}]})
            label_map = np.zeros((views, H, W), np.uint8)
            label_map[:, 3:9, 3 + s:9 + s] = 1
            rgb = np.full((views, H, W, 3), 128, np.uint8)
            rgb[label_map == 1] = rng.integers(0, 255, size=3, dtype=np.uint8)
            pose = np.repeat(np.eye(4)[None], views, axis=0)
            intrinsics = np.repeat(np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])[None], views, 0)
            store.append_images(scene_id, rgb, pose, intrinsics, label_map=label_map,
                                amodal_masks=(label_map == 1)[:, None])
            store.set_scene_state(scene_id, "complete")


def test_cli_train_monet_on_a_tiny_store(tmp_path):
    from cli import app

    store, run = tmp_path / "tiny.zarr", tmp_path / "run"
    make_store(store)
    runner = CliRunner()
    args = ["train", "monet", "--data", str(store), "--out", str(run), "--steps", "4", "--lds",
            "--no-progress", *TINY_OVERRIDES, "log.every=2", "log.checkpoint_every=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "to step 4" in result.output and str(run) in result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lds"]["enabled"] is True and saved["data"] == str(store)
    assert saved["optim"]["steps"] == 4 and saved["model"]["num_slots"] == 3
    assert list_checkpoints(run / "checkpoints") == [2, 4]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [2, 4]
    assert {"loss", "nll", "kl_z", "kl_mask", "lds", "grad_norm", "lr", "images_per_s"} <= set(rows[0])
    assert rows[0]["lds"] < 0                           # the prior is live (log-density, < 0 here)
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))

    resumed = runner.invoke(app, ["train", "monet", "--out", str(run), "--resume", "--steps", "6",
                                  "--no-progress"])
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert list_checkpoints(run / "checkpoints")[-1] == 6
    model, cfg = load_run(run)
    assert cfg.optim.steps == 6 and model.num_slots == 3
    limited = runner.invoke(app, ["train", "monet", "--out", str(run), "--resume", "--steps", "9",
                                  "--no-progress", "time_limit_minutes=1e-9"])
    assert limited.exit_code == 0, limited.output
    assert "stopped by time_limit_minutes=1e-09 at step 7 of 9; continue with" in limited.output

    again = runner.invoke(app, args)                    # the run exists: refuse, clearly
    assert again.exit_code != 0 and isinstance(again.exception, RunError)
    missing = runner.invoke(app, ["train", "monet", "--data", str(tmp_path / "nope.zarr"),
                                  "--out", str(tmp_path / "r2"), "--no-progress"])
    assert isinstance(missing.exception, UserError) and "does not exist" in str(missing.exception)


def test_the_loop_checks_the_output_contract_every_step(tmp_path, monkeypatch):
    import lds.models as models
    from lds.contract import ContractError
    from lds.models.monet import MONet

    class DriftingMONet(MONet):
        """Returns one slot too few in ``masks`` from the second step on."""

        calls = 0

        def forward(self, batch):
            out = super().forward(batch)
            DriftingMONet.calls += 1
            if DriftingMONet.calls >= 2:
                out.masks = out.masks[:, 1:]
            return out

    monkeypatch.setitem(models.MODEL_CLASSES, "monet", DriftingMONet)
    with pytest.raises(ContractError, match="masks has shape"):
        train(tiny_cfg("optim.steps=3"), tmp_path / "run", dataset=ImageList(images(4)), progress=False)
    assert DriftingMONet.calls == 2


def test_validation_curve_is_logged_and_leaves_training_unchanged(tmp_path):
    """Held-out evaluation at 0, every N steps and at the end: validation.jsonl holds FG-ARI,
    mIoU and MSE per step; the trained parameters are bit-identical to a run without it, and a
    resumed run logs each step once."""
    from lds.evaluation import make_validator

    store = tmp_path / "val.zarr"
    make_store(store)
    data = ImageList(images(5))
    plain = tiny_cfg("optim.steps=5", "log.checkpoint_every=100")
    train(plain, tmp_path / "plain", dataset=data, progress=False)
    validated = tiny_cfg("optim.steps=3", "log.checkpoint_every=100", f"validate.data={store}",
                         "validate.every=2", "validate.batch_size=3")
    train(validated, tmp_path / "val", dataset=data, progress=False, validator=make_validator(validated))
    resumed = read_run_config(tmp_path / "val", ["optim.steps=5"])
    train(resumed, tmp_path / "val", dataset=data, resume=True, progress=False,
          validator=make_validator(resumed))
    rows = read_metrics(tmp_path / "val", "validation.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 5]
    assert {"mse", "miou", "fg_ari", "ari", "sim", "decoded_miou"} <= set(rows[0])
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    a = load_checkpoint(tmp_path / "plain" / "checkpoints")
    b = load_checkpoint(tmp_path / "val" / "checkpoints")
    for key in a.model_state:
        assert torch.equal(a.model_state[key], b.model_state[key]), key
    assert make_validator(tiny_cfg()) is None                  # off unless data and every are set


def test_init_from_starts_at_given_parameters_with_a_fresh_optimiser(tmp_path):
    data = ImageList(images(5))
    first = tiny_cfg("optim.steps=2", "log.checkpoint_every=100")
    train(first, tmp_path / "first", dataset=data, progress=False)
    weights = tmp_path / "first" / "checkpoints" / "step_0000002.safetensors"
    # one step at a learning rate too small to move fp32 parameters: the checkpoint holds them
    second = tiny_cfg("optim.steps=1", "optim.lr=1e-30", f"init_from={weights}")
    train(second, tmp_path / "second", dataset=data, progress=False)
    a = load_checkpoint(tmp_path / "first" / "checkpoints").model_state
    b = load_checkpoint(tmp_path / "second" / "checkpoints").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="does not fit"):
        train(tiny_cfg("optim.steps=1", f"init_from={weights}", "model.latent_dim=5"),
              tmp_path / "third", dataset=data, progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        train(tiny_cfg("optim.steps=1", f"init_from={tmp_path / 'nope.safetensors'}"),
              tmp_path / "fourth", dataset=data, progress=False)


def test_one_trainer_per_run_directory(tmp_path):
    from common import locks

    data = ImageList(images(5))
    cfg = tiny_cfg("optim.steps=2", "log.checkpoint_every=100")
    train(cfg, tmp_path / "run", dataset=data, progress=False)
    held = locks.acquire(tmp_path / "run" / ".train.lock", "the other trainer")  # a live trainer
    try:
        with pytest.raises(RunError, match="being written by another process"):
            train(read_run_config(tmp_path / "run", ["optim.steps=4"]), tmp_path / "run",
                  dataset=data, resume=True, progress=False)
    finally:
        locks.release(held)
    train(read_run_config(tmp_path / "run", ["optim.steps=4"]), tmp_path / "run", dataset=data,
          resume=True, progress=False)                       # released: the resume goes ahead
    assert load_checkpoint(tmp_path / "run" / "checkpoints").step == 4


@pytest.mark.parametrize("change", ["lds.enabled=true", "optim.name=adam", "model.latent_dim=5",
                                    "model.num_slots=4", "seed=3"])
def test_resume_refuses_to_change_what_the_run_is(tmp_path, change):
    data = ImageList(images(5))
    train(tiny_cfg("optim.steps=2", "log.checkpoint_every=100"), tmp_path / "run", dataset=data,
          progress=False)
    key = change.split("=")[0]
    with pytest.raises(RunError, match=f"would change what .* is \\({key} "):
        train(read_run_config(tmp_path / "run", ["optim.steps=3", change]), tmp_path / "run",
              dataset=data, resume=True, progress=False)
    # what may change: steps, the learning rate (the NaN guard's advice), logging, threads
    ok = read_run_config(tmp_path / "run", ["optim.steps=3", "optim.lr=1e-4", "log.every=1",
                                            "threads=1", "model.fused_decoder=false"])
    assert train(ok, tmp_path / "run", dataset=data, resume=True, progress=False).step == 3


def test_resume_of_a_run_saved_before_a_model_key_existed_takes_its_default(tmp_path):
    import yaml

    data = ImageList(images(5))
    train(tiny_cfg("optim.steps=2", "log.checkpoint_every=100"), tmp_path / "run", dataset=data,
          progress=False)
    path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["model"].pop("likelihood") == "pixel"     # as a run made before the key existed
    path.write_text(yaml.safe_dump(saved))
    with pytest.raises(RunError, match="model.likelihood 'pixel' -> 'channel'"):
        train(read_run_config(tmp_path / "run", ["optim.steps=3", "model.likelihood=channel"]),
              tmp_path / "run", dataset=data, resume=True, progress=False)
    resumed = train(read_run_config(tmp_path / "run", ["optim.steps=3"]), tmp_path / "run",
                    dataset=data, resume=True, progress=False)
    assert resumed.step == 3


def test_saved_config_has_absolute_paths_so_resume_works_from_anywhere(tmp_path, monkeypatch):
    make_store(tmp_path / "data" / "tiny.zarr")
    monkeypatch.chdir(tmp_path / "data")
    cfg = tiny_cfg("optim.steps=1", "data=tiny.zarr", "log.checkpoint_every=100")
    train(cfg, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"] == str(tmp_path / "data" / "tiny.zarr")
    monkeypatch.chdir(tmp_path)
    resumed = read_run_config(tmp_path / "run", ["optim.steps=2"])
    assert train(resumed, tmp_path / "run", resume=True, progress=False).step == 2


def test_after_divergence_the_advised_resume_works(tmp_path):
    """A NaN stop often comes after the weights have already blown up (finite, but huge): the
    state saved before the NaN would NaN again. The message names the latest checkpoint before
    the parameter norm jumped and the command to resume from it with a lower learning rate;
    following that advice trains on without a NaN, and the later checkpoints are kept aside."""
    import re

    data = ImageList(images(5))
    train(tiny_cfg("optim.steps=10", "log.checkpoint_every=5"), tmp_path / "run", dataset=data,
          progress=False)
    with pytest.raises(NonFiniteLossError) as info:          # far too high a learning rate
        train(read_run_config(tmp_path / "run", ["optim.steps=60", "optim.lr=0.2"]),
              tmp_path / "run", dataset=data, resume=True, progress=False)
    message = str(info.value)
    advised = re.search(r"--from-step (\d+) optim\.lr=([0-9.e-]+)", message)
    assert advised, message
    step, lr = int(advised.group(1)), advised.group(2)
    ckpt = tmp_path / "run" / "checkpoints"
    stopped_at = list_checkpoints(ckpt)[-1]
    assert step == 10 and stopped_at > step                  # not the diverged pre-NaN state
    result = train(read_run_config(tmp_path / "run", ["optim.steps=30", f"optim.lr={lr}"]),
                   tmp_path / "run", dataset=data, resume=True, progress=False, resume_step=step)
    assert result.step == 30 and list_checkpoints(ckpt)[-1] == 30
    aside = [p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("after_0000010")]
    assert aside and (aside[0] / f"step_{stopped_at:07d}.safetensors").is_file()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})   # one row per step


def test_broken_checkpoints_are_one_clear_error(tmp_path):
    import json as _json

    from safetensors.torch import load_file, save_file

    from lds.training.checkpoint import CheckpointError

    data = ImageList(images(5))
    train(tiny_cfg("optim.steps=2", "log.checkpoint_every=100"), tmp_path / "good", dataset=data,
          progress=False)

    def broken(name, damage):
        import shutil

        shutil.copytree(tmp_path / "good", tmp_path / name)
        ckpt = tmp_path / name / "checkpoints"
        damage(ckpt / "step_0000002.safetensors", ckpt / "optim_0000002.safetensors",
               ckpt / "state_0000002.json")
        return tmp_path / name

    def model_tensors(edit):
        def damage(model, optim, state):
            tensors = load_file(model)
            edit(tensors)
            save_file(tensors, str(model))
        return damage

    def optim_tensors(edit):
        def damage(model, optim, state):
            tensors = load_file(optim)
            edit(tensors)
            save_file(tensors, str(optim))
        return damage

    def state_json(edit):
        def damage(model, optim, state):
            state.write_text(edit(_json.loads(state.read_text())))
        return damage

    first = lambda t: sorted(t)[0]                                         # noqa: E731
    cases = {
        "wrong_shape": (model_tensors(lambda t: t.update({first(t): t[first(t)][..., :1].clone()})), "does not fit"),
        "missing_key": (model_tensors(lambda t: t.pop(first(t))), "missing"),
        "optim_shape": (optim_tensors(lambda t: t.update({k: v[:1].clone() for k, v in t.items() if v.dim() > 1})), "optimiser state"),
        "bad_groups": (state_json(lambda s: _json.dumps({**s, "optimizer": {**s["optimizer"], "param_groups": [{"lr": 1}]}})), "parameter groups"),
        "bare_string": (state_json(lambda s: _json.dumps("hello")), "not this checkpoint's state"),
        "deep": (state_json(lambda s: "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    }
    for name, (damage, words) in cases.items():
        run = broken(name, damage)
        with pytest.raises((CheckpointError, RunError), match=words):
            train(read_run_config(run, ["optim.steps=3"]), run, dataset=data, resume=True,
                  progress=False)
