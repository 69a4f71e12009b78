"""torch datasets over a scene store.

``ImageDataset`` yields single images (MONet, IODINE, GENESIS); ``SceneViewsDataset`` yields
scenes as sets of views (MulMON).  Both return dicts of tensors:

    image              (3, H, W) float32 in [0, 1]          [views: (V, 3, H, W)]
    label_map          (H, W) int64, 0 = background          ground-truth stores only
    amodal_masks       (O, H, W) bool                        ground-truth stores only
    camera_pose_world  (4, 4) float32, OpenCV axes, metres
    intrinsics         (3, 3) float32
    viewpoint          (v,) float32 (datasets/viewpoints.py)
    image_index, scene_index  int64

Small stores (the usual 64x64 training store is a few hundred MB) are read into memory once:
one bulk read beats thousands of per-item zarr reads, and forked DataLoader workers share the
pages.  Larger stores are read per item through a store handle opened lazily in each worker
(zarr's I/O thread must not cross a fork).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.store import SceneStore, StoreError
from datasets.viewpoints import default_viewpoint_kind, viewpoint_vector

IN_MEMORY_LIMIT_BYTES = 4 << 30


class _StoreBacked(Dataset):
    def __init__(self, store_path, scene_ids=None, in_memory: bool | str = "auto",
                 viewpoint: str | None = None, include_discarded: bool = False):
        self.store_path = str(store_path)
        store = SceneStore.open(store_path)
        self.height, self.width = store.height, store.width
        self.has_ground_truth = store.has_ground_truth
        self.viewpoint_kind = viewpoint or default_viewpoint_kind(store.attrs)
        wanted = store.scene_ids if scene_ids is None else list(scene_ids)
        missing = [s for s in wanted if not store.has_scene(s)]
        if missing:
            raise StoreError(f"scene(s) {missing[:5]} not in {store_path}")
        self.scene_ids = [s for s in wanted if store.scene_state(s) != "aborted"]
        self.scene_images = [store.scene_image_indices(s) for s in self.scene_ids]
        self.fields = ["rgb", "camera_pose_world", "intrinsics", "scene_index"]
        if self.has_ground_truth:
            self.fields += ["label_map", "amodal_masks"]
        bytes_per_image = self.height * self.width * (3 + (1 + store.max_objects if self.has_ground_truth else 0))
        total = bytes_per_image * store.num_images
        self.in_memory = (total <= IN_MEMORY_LIMIT_BYTES) if in_memory == "auto" else bool(in_memory)
        self._rows = store.images(slice(0, store.num_images), fields=self.fields) if self.in_memory else None
        self._store: SceneStore | None = None
        store.close()

    def __getstate__(self):  # never ship an open zarr handle into a worker process
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def _read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        if self._rows is not None:
            return {k: v[indices] for k, v in self._rows.items()}
        if self._store is None:
            self._store = SceneStore.open(self.store_path)
        return self._store.images(indices, fields=self.fields)

    def _to_tensors(self, rows: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, torch.Tensor]:
        rgb = torch.from_numpy(np.ascontiguousarray(rows["rgb"])).permute(0, 3, 1, 2).float().div_(255.0)
        out = {
            "image": rgb,
            "camera_pose_world": torch.from_numpy(rows["camera_pose_world"].astype(np.float32)),
            "intrinsics": torch.from_numpy(rows["intrinsics"].astype(np.float32)),
            "viewpoint": torch.from_numpy(viewpoint_vector(rows["camera_pose_world"], self.viewpoint_kind)),
            "image_index": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
            "scene_index": torch.from_numpy(rows["scene_index"].astype(np.int64)),
        }
        if self.has_ground_truth:
            out["label_map"] = torch.from_numpy(rows["label_map"].astype(np.int64))
            out["amodal_masks"] = torch.from_numpy(np.ascontiguousarray(rows["amodal_masks"]))
        return out


class ImageDataset(_StoreBacked):
    """One item per committed image of the chosen scenes (aborted and discarded ones skipped)."""

    def __init__(self, store_path, scene_ids=None, in_memory: bool | str = "auto", viewpoint: str | None = None):
        super().__init__(store_path, scene_ids, in_memory, viewpoint)
        self.indices = np.concatenate(self.scene_images) if self.scene_images else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        index = self.indices[item: item + 1]
        return {k: v[0] for k, v in self._to_tensors(self._read(index), index).items()}


class SceneViewsDataset(_StoreBacked):
    """One item per scene: ``num_views`` of its views in random order (MulMON's input).

    ``view_window`` says which views: "any" draws them from all of the scene's views (MulMON's
    sampling); "nearest" draws one view and takes the ``num_views - 1`` views whose cameras look
    from the directions nearest to it (angle between the optical axes), so a scene captured all
    round is read as windows of neighbouring views. Multi-view MulMON at CPU scale splits scenes
    whose views stand on a 45-90 deg arc, later on wider ones, and not on views from all round
    (docs/results/mulmon_cpu_regime), and the rig captures 20-30 views over up to 360 deg.
    In store order (evaluation) the window is the first view and its nearest, nearest first.

    The model treats the first ``num_observed`` as observed and the rest as queries; MulMON's
    trainer draws that split per step, so it is not fixed here.  Scenes with fewer views than
    ``num_views`` are left out (and counted in ``skipped_scenes``).  ``shuffle_views=False``
    keeps store view order (for evaluation); ``every_view`` (only with ``num_views=1``) makes
    each view of each scene an item of its own.

    An item key may be ``(index, seed)``: the views are then drawn from a generator seeded with
    ``seed``, so a training loop that derives the seed from its step replays the same views on
    resume (the training loop's sampler does; see ``takes_item_seeds``).  A plain index draws
    from torch's global RNG.
    """

    takes_item_seeds = True

    def __init__(self, store_path, num_views: int | None = None, scene_ids=None,
                 in_memory: bool | str = "auto", viewpoint: str | None = None, shuffle_views: bool = True,
                 every_view: bool = False, view_window: str = "any"):
        super().__init__(store_path, scene_ids, in_memory, viewpoint)
        if view_window not in ("any", "nearest"):
            raise ValueError(f"view_window must be any or nearest, got {view_window!r}")
        if every_view:
            # A one-view model sees each view on its own, so every view of every scene is a test
            # item (as every image is for the single-image models), not only the first of each.
            if num_views != 1:
                raise ValueError("every_view is for num_views = 1")
            self.scene_ids = [s for s, ix in zip(self.scene_ids, self.scene_images) for _ in ix]
            self.scene_images = [ix[i:i + 1] for ix in self.scene_images for i in range(len(ix))]
        counts = [len(ix) for ix in self.scene_images]
        if not counts:
            raise StoreError(f"{store_path} has no scenes to read")
        self.num_views = int(num_views) if num_views else min(counts)
        keep = [i for i, c in enumerate(counts) if c >= self.num_views]
        self.skipped_scenes = len(counts) - len(keep)
        if not keep:
            raise StoreError(f"no scene in {store_path} has {self.num_views} views (most: {max(counts)})")
        self.scene_ids = [self.scene_ids[i] for i in keep]
        self.scene_images = [self.scene_images[i] for i in keep]
        self.shuffle_views = shuffle_views
        self.view_window = view_window
        if view_window == "nearest":
            # Each view's optical axis in the world (OpenCV: the camera's +z), read once: the
            # poses are a few bytes per image even where the images stay on disk.
            if self._rows is not None:
                poses = self._rows["camera_pose_world"]
            else:
                store = SceneStore.open(self.store_path)
                poses = store.images(slice(0, store.num_images), fields=["camera_pose_world"])["camera_pose_world"]
                store.close()
            axes = np.asarray(poses, dtype=np.float64)[:, :3, 2]
            self._axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)

    def __len__(self) -> int:
        return len(self.scene_ids)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        generator = None
        if isinstance(item, tuple):
            item, seed = item
            generator = torch.Generator().manual_seed(int(seed))
        views = self.scene_images[item]
        if self.view_window == "nearest":
            anchor = int(torch.randint(len(views), (1,), generator=generator)) if self.shuffle_views else 0
            axes = self._axes[views]
            # stable sort: ties keep store order, so evaluation windows are reproducible
            views = views[np.argsort(-(axes @ axes[anchor]), kind="stable")[: self.num_views]]
            if self.shuffle_views:
                views = views[torch.randperm(len(views), generator=generator).numpy()]
        elif self.shuffle_views:
            views = views[torch.randperm(len(views), generator=generator)[: self.num_views].numpy()]
        else:
            views = views[: self.num_views]
        return self._to_tensors(self._read(views), views)
