"""The simulated camera: renders the simulated rig's cube scene (Mitsuba, through the synthetic
scenes' renderer) from the simulated arm's current camera pose with the configured intrinsics.

Each frame carries the renderer's ground truth (visible label map, amodal masks), which the
capture session writes to the store like any other view.  Exposure is fixed, so locking it is a
no-op that says so.
"""

from __future__ import annotations

import time

import numpy as np

from capture.camera import Camera, CameraConfig, CameraError, Frame


class SimulatedCamera(Camera):
    def __init__(self, config: CameraConfig, arm=None, scene=None, seed: int = 0):
        super().__init__(config)
        self.arm = arm
        self.scene = scene
        self._rng = np.random.default_rng(seed)
        self.last_ground_truth: dict | None = None

    @property
    def is_live(self) -> bool:
        return False  # nothing to warm up: the renderer gives a correct image from the first frame

    def describe(self) -> str:
        return "simulated camera"

    def set_scene(self, scene, seed: int | None = None) -> None:
        """The cube scene to render from now on (the operator 'rearranged the cubes')."""
        self.scene = scene
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def _open_device(self) -> None:
        if self.arm is None:
            raise CameraError("the simulated camera needs the simulated arm it is mounted on")

    def _close_device(self) -> None:
        """Nothing to release: the renderer holds no device and the arm belongs to the rig."""

    def intrinsics(self) -> np.ndarray:
        K = self.config.intrinsics_matrix()
        if K is None:  # the synthetic scenes' webcam: 62 degrees horizontal field of view
            from datasets.synth.cubes import default_intrinsics

            K = default_intrinsics(self.config.width, self.config.height)
        return K

    def _read_frame(self):
        from datasets.synth.cubes import render_cube_view

        if self.scene is None:
            raise CameraError("the simulated camera has no scene to render (set_scene first)")
        timestamp = time.time()  # the pose is sampled now: the "exposure" begins here
        pose = self.arm.camera_pose_world()
        rgb, label_map, amodal = render_cube_view(
            self.scene, pose, self.intrinsics(), self.config.width, self.config.height,
            spp=self.config.sim_spp, rng=self._rng, noise=self.config.sim_noise)
        self.last_ground_truth = {"label_map": label_map, "amodal_masks": amodal}
        return rgb, timestamp, None

    def _make_frame(self, image, timestamp, device_timestamp) -> Frame:
        frame = super()._make_frame(image, timestamp, device_timestamp)
        frame.ground_truth = self.last_ground_truth
        return frame

    def settings(self) -> dict:
        out = super().settings()
        out.update(spp=self.config.sim_spp, noise=self.config.sim_noise, exposure="fixed (simulated)")
        return out

    def lock_exposure(self) -> dict:
        return {"exposure": "fixed (simulated)"}
