"""The README's main job, shrunk: simulated capture -> prepare -> MONet0/MONet+ -> eval -> report."""

import json

from typer.testing import CliRunner

from cli import app
from datasets.store import SceneStore


def test_demo_end_to_end_and_resumable(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "scenes=2", "views=3", "steps=2", "size=32", "batch_size=4",
            "capture_width=80", "capture_height=60", "capture_spp=2", "figure_examples=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| MSE |" in report and "mIoU" in report and "figure2.png" in report
    # it starts from the shipped checkpoints and says so, with the figures that matter
    assert "lds/assets/demo" in report and "FG-ARI" in report and "table split" in report
    for name in ("figure2.png", "capture_scene0.png"):
        assert (out / name).stat().st_size > 1000
    with SceneStore.open(out / "raw.zarr") as raw:
        assert raw.num_images == 6 and raw.height == 60
        assert all(raw.scene_state(s) == "complete" for s in raw.scene_ids)
    for run in ("monet-control", "monet-lds"):
        evaluation = json.loads((out / "runs" / run / "eval" / "eval.json").read_text())
        assert evaluation["meta"]["num_images"] == 3  # the held-out scene's views
    lds_log = (out / "runs" / "monet-lds" / "metrics.jsonl").read_text()
    assert '"lds"' in lds_log
    # A second run finds every stage done and only re-evaluates.
    mtime = (out / "runs" / "monet-lds" / "config.yaml").stat().st_mtime
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "1/4 capture" not in again.output and "3/4 train" not in again.output
    assert (out / "runs" / "monet-lds" / "config.yaml").stat().st_mtime == mtime


def test_demo_config_errors_are_one_line():
    import pytest

    from common.errors import ConfigError
    from lds.experiments.demo import DemoConfig

    with pytest.raises(ConfigError, match="init must be"):
        DemoConfig(init="imagenet")
    with pytest.raises(ConfigError, match="32x32"):
        DemoConfig(size=64)
    assert DemoConfig(size=64, init="none").initial_weights(lds=True) == ""
