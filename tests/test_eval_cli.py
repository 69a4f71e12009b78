"""The evaluation path on a real scene store, and the `compare` / `eval` commands."""

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from common.errors import UserError
from datasets.store import SceneStore
from datasets.torch_data import ImageDataset
from lds.cli.evaluate import compare_command, eval_command
from lds.evaluation import EvalResult, evaluate
from lds.training.runs import latest_checkpoint_step
from tests.test_eval import LabelOracle

H = W = 16


def make_store(path, scenes: int = 2, views: int = 2) -> None:
    """A tiny ground-truth store: two cubes drawn as squares, background elsewhere."""
    rng = np.random.default_rng(0)
    with SceneStore.create(path, height=H, width=W, ground_truth=True, max_objects=3,
                           attrs={"source": "test"}) as store:
        for s in range(scenes):
            scene_id = f"scene_{s}"
            store.add_scene(scene_id, {"source": "test", "objects": [{"shape": "cube"}] * 2})
            label_map = np.zeros((views, H, W), np.uint8)
            label_map[:, 2:7, 2 + s:7 + s] = 1
            label_map[:, 9:14, 8:13] = 2
            amodal = np.stack([label_map == 1, label_map == 2], axis=1)
            rgb = rng.integers(0, 255, size=(views, H, W, 3), dtype=np.uint8)
            pose = np.repeat(np.eye(4)[None], views, axis=0)
            pose[:, 2, 3] = -1.0
            intrinsics = np.repeat(np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])[None], views, 0)
            store.append_images(scene_id, rgb, pose, intrinsics, label_map=label_map,
                                amodal_masks=amodal)
            store.set_scene_state(scene_id, "complete")


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    return app


def test_evaluate_on_a_real_store(tmp_path):
    make_store(tmp_path / "store")
    dataset = ImageDataset(tmp_path / "store")
    result = evaluate(LabelOracle(), dataset, batch_size=3, progress=False)
    assert len(result.records) == 4
    assert [r["scene_index"] for r in result.records] == [0, 0, 1, 1]
    assert result.mean("miou") == 1.0 and result.mean("fg_ari") == pytest.approx(1.0)
    assert result.meta["ground_truth"] is True


def test_compare_command_prints_the_papers_view(tmp_path):
    make_store(tmp_path / "store")
    dataset = ImageDataset(tmp_path / "store")
    data = str((tmp_path / "store").resolve())
    for name, duplicate in (("control", True), ("lds", False)):
        result = evaluate(LabelOracle(duplicate=duplicate), dataset, progress=False,
                          meta={"data": data, "lds": {"enabled": not duplicate}})
        result.save(tmp_path / name / "eval" / "eval.json")
    out = tmp_path / "cmp.json"
    run = CliRunner().invoke(cli_app(), ["compare", str(tmp_path / "control"),
                                         str(tmp_path / "lds"), "--out", str(out)],
                             env={"COLUMNS": "160"})
    assert run.exit_code == 0, run.output
    assert "ΔSim" in run.output and "images with duplicates, GT (%)" in run.output
    rows = json.loads(out.read_text())["rows"]
    assert rows["dup_gt"]["control"] == 1.0 and rows["dup_gt"]["lds"] == 0.0
    assert rows["miou"]["delta"] == 0.0


def test_compare_refuses_identical_and_swapped_runs_and_calls_no_difference_a_tie(tmp_path):
    make_store(tmp_path / "store")
    dataset = ImageDataset(tmp_path / "store")
    for name, lds in (("control", False), ("lds", True)):
        result = evaluate(LabelOracle(), dataset, progress=False, meta={"lds": {"enabled": lds}})
        result.save(tmp_path / name / "eval" / "eval.json")
    same = CliRunner().invoke(cli_app(), ["compare", str(tmp_path / "lds"), str(tmp_path / "lds")])
    assert same.exit_code != 0 and "given twice" in str(same.exception)
    swapped = CliRunner().invoke(cli_app(), ["compare", str(tmp_path / "lds"), str(tmp_path / "control")])
    assert swapped.exit_code != 0 and "swapped" in str(swapped.exception)
    from lds.evaluation import compare as compare_results

    control, lds = (EvalResult.load(tmp_path / n / "eval" / "eval.json") for n in ("control", "lds"))
    lds.aggregates["mse"]["mean"] = control.aggregates["mse"]["mean"] + 1e-9   # shows as 0.00000
    rows = compare_results(control, lds)
    assert rows["mse"]["delta"] > 0 and rows["mse"]["lds_better"] is None


def test_compare_without_eval_and_without_data_is_a_user_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = CliRunner().invoke(cli_app(), ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert isinstance(run.exception, UserError)
    assert "ldsrig eval" in str(run.exception)


def test_eval_missing_run_is_a_user_error(tmp_path):
    run = CliRunner().invoke(cli_app(), ["eval", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert isinstance(run.exception, UserError)
    assert "does not exist" in str(run.exception)


TINY_MONET = ["model.height=16", "model.width=16", "model.num_slots=4", "model.latent_dim=4",
              "model.unet_channels=[8,8,8]", "model.unet_mlp_hidden=16",
              "model.encoder_channels=[8,8]", "model.encoder_hidden=16",
              "model.decoder_channels=[8,8]", "optim.batch_size=4", "optim.steps=3",
              "log.every=1", "log.checkpoint_every=3", "log.tensorboard=false"]


def test_eval_and_compare_end_to_end_on_trained_runs(tmp_path):
    """`ldsrig eval` / `ldsrig compare` through the root app on two tiny trained MONet runs."""
    from cli import app
    from lds.training.config import load_train_config
    from lds.training.loop import train

    store = tmp_path / "store"
    make_store(store, scenes=3)
    for name, lds in (("control", False), ("lds", True)):
        cfg = load_train_config("monet", None, TINY_MONET + [f"data={store}"])
        cfg.lds.enabled = lds
        cfg.log.checkpoint_every = 1          # steps 1, 2, 3: --step below scores step 1
        train(cfg, tmp_path / name, progress=False)

    runner = CliRunner()
    run = runner.invoke(app, ["eval", str(tmp_path / "control"), "--data", str(store),
                              "--figure", "2", "--batch-size", "4", "--no-progress"],
                        env={"COLUMNS": "160"})
    assert run.exit_code == 0, run.output
    result = EvalResult.load(tmp_path / "control" / "eval" / "eval.json")
    assert result.meta["num_images"] == 6 and result.meta["model"] == "monet"
    assert result.meta["lds"]["enabled"] is False
    assert 0.0 <= result.mean("miou") <= result.mean("miou_greedy") + 1e-12 <= 1.0 + 1e-12
    assert (tmp_path / "control" / "eval" / "figure2.png").stat().st_size > 1000
    assert "mIoU (Hungarian)" in run.output
    # a second eval does not silently replace the first; --overwrite does
    again = runner.invoke(app, ["eval", str(tmp_path / "control"), "--data", str(store), "--no-progress"])
    assert again.exit_code != 0 and "exists already" in str(again.exception)
    again = runner.invoke(app, ["eval", str(tmp_path / "control"), "--data", str(store),
                                "--no-progress", "--overwrite", "--max-images", "2"])
    assert again.exit_code == 0, again.output
    assert EvalResult.load(tmp_path / "control" / "eval" / "eval.json").meta["num_images"] == 2
    # --step scores an earlier checkpoint: other weights, so another reconstruction error
    early = runner.invoke(app, ["eval", str(tmp_path / "control"), "--data", str(store),
                                "--no-progress", "--step", "1", "--max-images", "2", "--out",
                                str(tmp_path / "early.json")])
    assert early.exit_code == 0, early.output
    early_result = EvalResult.load(tmp_path / "early.json")
    latest = EvalResult.load(tmp_path / "control" / "eval" / "eval.json")
    assert early_result.meta["checkpoint_step"] == 1
    assert latest.meta["checkpoint_step"] == latest_checkpoint_step(tmp_path / "control") > 1
    assert early_result.mean("mse") != latest.mean("mse")

    # the LDS run has no eval.json yet: compare evaluates it first because --data is given
    run = runner.invoke(app, ["compare", str(tmp_path / "control"), str(tmp_path / "lds"),
                              "--data", str(store)], env={"COLUMNS": "160"})
    assert run.exit_code == 0, run.output
    assert "ΔSim" in run.output
    assert EvalResult.load(tmp_path / "lds" / "eval" / "eval.json").meta["lds"]["enabled"] is True
