"""Every mistake gets one clear line and a non-zero exit, through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from lds.training import load_train_config, train
    from tests.test_eval_cli import make_store
    from tests.test_monet import TINY_OVERRIDES

    root = tmp_path_factory.mktemp("errors")
    make_store(root / "store16.zarr", scenes=1)
    cfg = load_train_config("monet", None, TINY_OVERRIDES + [f"data={root / 'store16.zarr'}",
                                                             "optim.steps=1", "log.tensorboard=false"])
    train(cfg, root / "run", progress=False)
    return root


def _ldsrig(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    text = result.stderr.strip()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and text.startswith("error:"), result.stderr
    assert len(text.splitlines()) == 1, text
    for word in words:
        assert word in text, text


def test_bad_device_yaml_and_binary_config_are_one_line(tiny_run):
    store = str(tiny_run / "store16.zarr")
    _one_line_error(_ldsrig("train", "monet", "--data", store, "--out", "r1", "--steps", "1",
                            "device=banana", cwd=tiny_run), "not a torch device")
    _one_line_error(_ldsrig("train", "monet", "--data", store, "--out", "r2", "--steps", "1",
                            "model.unet_channels=[16,16", cwd=tiny_run), "not a valid YAML value")
    (tiny_run / "binary.yaml").write_bytes(bytes(range(256)))
    _one_line_error(_ldsrig("train", "monet", "--config", "binary.yaml", "--data", store,
                            "--out", "r3", cwd=tiny_run), "not a text file")


def test_eval_on_a_store_of_another_size_is_one_line(tiny_run):
    from datasets.store import SceneStore
    import numpy as np

    with SceneStore.create(tiny_run / "store24.zarr", 24, 24) as st:
        st.add_scene("a")
        st.append_images("a", np.zeros((1, 24, 24, 3), np.uint8), np.eye(4)[None],
                         np.array([[[20.0, 0, 12], [0, 20, 12], [0, 0, 1]]]))
    _one_line_error(_ldsrig("eval", "run", "--data", "store24.zarr", "--out", "e.json",
                            cwd=tiny_run), "24x24 images", "data prepare")


def test_eval_of_a_step_without_a_checkpoint_is_one_line(tiny_run):
    _one_line_error(_ldsrig("eval", "run", "--data", "store16.zarr", "--step", "7",
                            "--out", "step7.json", cwd=tiny_run), "no checkpoint for step 7")


def test_observed_views_on_a_single_image_model_is_one_line(tiny_run):
    _one_line_error(_ldsrig("eval", "run", "--data", "store16.zarr", "--observed-views", "3",
                            "--out", "obs3.json", cwd=tiny_run), "multi-view models", "monet")


def test_resume_that_changes_the_run_and_nan_weights_are_one_line(tiny_run):
    _one_line_error(_ldsrig("train", "monet", "--out", "run", "--resume", "--lds", "--steps", "2",
                            cwd=tiny_run), "lds.enabled False -> True")
    _one_line_error(_ldsrig("train", "monet", "--out", "run", "--resume", "--steps", "2",
                            "optim.name=adam", cwd=tiny_run), "optim.name")
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_run / "run", tiny_run / "nan_run")
    weights = next((tiny_run / "nan_run" / "checkpoints").glob("step_*.safetensors"))
    state = {k: v * float("nan") if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(state, str(weights))
    _one_line_error(_ldsrig("eval", "nan_run", "--data", "store16.zarr", cwd=tiny_run),
                    "non-finite weights")
