"""Opening a scene store the way a model reads it, for training and for evaluation.

At the bottom of lds/ with the contract and the prior: training, evaluation, the inference gap,
experiments and the command lines all open their data here.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from common.errors import ConfigError, UserError


def open_store_dataset(path: str | Path, model_cfg=None, training: bool = True,
                       every_view: bool = False) -> Dataset:
    """The store as the model reads it: single images, or scenes as sets of views when the
    model config says ``dataset = "views"`` (MulMON: ``num_views`` views per scene, shuffled in
    training, store order in evaluation, from all of the scene's views or a window of
    neighbouring ones: ``view_window``; a ``viewpoint`` of "auto" is resolved from the store
    and written back into ``model_cfg`` so the saved run config names the vector it used)."""
    if not path:
        raise ConfigError("no training data: pass --data STORE (or set data: in the config)")
    if not Path(path).exists():
        raise ConfigError(f"{'training ' if training else ''}data {path} does not exist")
    from datasets.torch_data import ImageDataset, SceneViewsDataset

    if getattr(model_cfg, "dataset", "images") == "views":
        kind = getattr(model_cfg, "viewpoint", "auto")
        dataset = SceneViewsDataset(str(path), num_views=model_cfg.num_views, shuffle_views=training,
                                    viewpoint=None if kind == "auto" else kind,
                                    every_view=every_view and model_cfg.num_views == 1,
                                    view_window=getattr(model_cfg, "view_window", "any"))
        model_cfg.viewpoint = dataset.viewpoint_kind
        return dataset
    return ImageDataset(path)


def open_eval_dataset(data: str | Path, model_cfg=None) -> Dataset:
    """The store for evaluating a trained model (store order; scenes as sets of views for
    multi-view models, every view on its own for a one-view MulMON), refused with one line when
    its images are not the model's size."""
    if not Path(data).exists():
        raise UserError(f"data store {data} does not exist")
    # A one-view MulMON is tested on every view of every scene, each on its own (the validation
    # curves during training keep the first view of each scene, as before).
    dataset = open_store_dataset(data, model_cfg, training=False, every_view=True)
    if len(dataset) and model_cfg is not None:
        size = tuple(dataset[0]["image"].shape[-2:])
        if size != (model_cfg.height, model_cfg.width):
            raise UserError(f"{data} holds {size[0]}x{size[1]} images but the model was trained on "
                            f"{model_cfg.height}x{model_cfg.width}; derive a store of that size "
                            f"with `ldsrig data prepare {data} OUT --size {model_cfg.height}`")
    return dataset
