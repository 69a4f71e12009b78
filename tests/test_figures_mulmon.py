"""Figure 2 for MulMON: one row per view (observed, then query), the same layout as the
single-image models, from a model, and through `ldsrig eval --figure` / `ldsrig compare --figure`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lds.evaluation.figures import _view_labels, figure2
from lds.models import MulMONConfig, build_model
from tests.test_mulmon import H, W, make_views_store, scenes_batch

TILE_INCHES, DPI = 1.1, 100


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_mulmon(num_slots: int = 3):
    torch.manual_seed(0)
    return build_model(MulMONConfig(
        height=H, width=W, num_slots=num_slots, num_iterations=2, viewpoint="clevr-mv",
        view_hidden=16, projector_hidden=32, refine_hidden=32, refine_features=32, lstm_hidden=32))


def grid_pixels(rows: int, cols: int) -> tuple[int, int]:
    return round(TILE_INCHES * cols * DPI), round(TILE_INCHES * rows * DPI)


def test_mulmon_figure_has_one_row_per_view_and_the_slot_columns(tmp_path):
    model = tiny_mulmon(num_slots=3)
    batch = scenes_batch(scenes=2, views=4)
    path = figure2(model, batch, tmp_path / "mulmon.png", tile_inches=TILE_INCHES, dpi=DPI)
    image = Image.open(path)
    # columns: Obs, Rec, 3 slots, Seg; rows: 2 scenes x 4 views
    assert image.size == grid_pixels(rows=8, cols=6)
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10                               # tiles were drawn
    # the first row's Obs tile shows the first view of the first scene (grey with a square)
    assert model.training                                  # figure2 restores the mode


def test_rows_are_labelled_observed_then_query():
    model = tiny_mulmon().eval()
    batch = scenes_batch(scenes=2, views=4)
    with torch.no_grad():
        output = model(batch)            # evaluation: min(5, 4 - 1) = 3 observed, 1 query
    labels = _view_labels(output, views_per_scene=4)
    assert labels == ["scene 1\nobserved 1", "scene 1\nobserved 2", "scene 1\nobserved 3",
                      "scene 1\nquery 1", "scene 2\nobserved 1", "scene 2\nobserved 2",
                      "scene 2\nobserved 3", "scene 2\nquery 1"]


def test_unbounded_rgb_is_clamped_and_the_figure_says_so(tmp_path):
    model = tiny_mulmon().eval()
    batch = scenes_batch(scenes=1, views=3)
    with torch.no_grad():
        output = model(batch)
    plain = figure2(output, batch, tmp_path / "plain.png")
    # the same output with RGB means far outside [0, 1]: tiles clamp, a note line is added
    output.appearance.mul_(10.0).sub_(5.0)
    output.reconstruction.copy_((output.masks * output.appearance).sum(1))
    noted = figure2(output, batch, tmp_path / "noted.png")
    a, b = np.asarray(Image.open(plain).convert("L")), np.asarray(Image.open(noted).convert("L"))
    assert a.shape == b.shape                      # same grid
    assert not np.array_equal(a, b)                # clamped tiles and the note differ


def test_single_image_models_still_need_only_images(tmp_path):
    model = tiny_mulmon()
    with pytest.raises(ValueError, match="viewpoint"):
        figure2(model, torch.rand(2, 3, H, W), tmp_path / "x.png")


def test_eval_and_compare_write_mulmon_figures(tmp_path):
    from cli import app

    store, run = tmp_path / "views.zarr", tmp_path / "run"
    make_views_store(store, scenes=2, views=4)
    runner = CliRunner()
    trained = runner.invoke(app, [
        "train", "mulmon", "--data", str(store), "--out", str(run), "--steps", "1", "--no-progress",
        "model.height=32", "model.width=32", "model.num_slots=3", "model.num_iterations=1",
        "model.num_views=4", "optim.batch_size=2"])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)

    evaluated = runner.invoke(app, ["eval", str(run), "--data", str(store), "--figure", "1",
                                    "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    figure = Image.open(run / "eval" / "figure2.png")
    assert figure.size == grid_pixels(rows=4, cols=6)    # 1 scene x 4 views; Obs Rec 3 Seg

    # the same weights as an "LDS run" (compare refuses a run compared with itself)
    import shutil

    import yaml

    twin = run.parent / (run.name + "_lds")
    shutil.copytree(run, twin)
    shutil.rmtree(twin / "eval")
    saved = yaml.safe_load((twin / "config.yaml").read_text())
    saved["lds"]["enabled"] = True
    (twin / "config.yaml").write_text(yaml.safe_dump(saved))
    compared = runner.invoke(app, ["compare", str(run), str(twin), "--data", str(store),
                                   "--figure", "2"])
    assert compared.exit_code == 0, compared.output + repr(compared.exception)
    stacked = Image.open(twin / "eval" / "figure2_vs_control.png")
    assert stacked.size == grid_pixels(rows=2 * 2 * 4, cols=6)   # 2 runs x 2 scenes x 4 views
