"""Quick image checks run on every captured view before it is written: blur (variance of the
Laplacian) and over/under exposure (fraction of clipped pixels, mean brightness)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class ImageCheckConfig:
    enabled: bool = True
    # Variance of the Laplacian of the grey image below this is "blurred".  It scales with image
    # content and size: a white table with a few cubes at 640x480 gives a few hundred when sharp;
    # motion blur from a still-vibrating arm drops it well below 20.  Calibrate for your scenes.
    min_laplacian_variance: float = 15.0
    # Burnt-out pixels (every channel >= 250).  The rig's white table legitimately clips in places
    # under a bright light, so only a large burnt-out share counts as overexposed.
    max_overexposed_fraction: float = 0.4
    max_underexposed_fraction: float = 0.5  # pixels with every channel <= 5
    min_mean_brightness: float = 25.0
    max_mean_brightness: float = 235.0
    max_retakes: int = 2  # retakes per view before the best frame is kept and flagged
    retake_delay_s: float = 0.2  # wait before a retake (lets vibration die down)


@dataclass
class ImageCheck:
    laplacian_variance: float
    overexposed_fraction: float
    underexposed_fraction: float
    mean_brightness: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def score(self) -> float:
        """Higher is better; used to keep the best of several failed takes."""
        return -len(self.problems) * 1e6 + self.laplacian_variance

    def to_dict(self) -> dict:
        return {"laplacian_variance": round(self.laplacian_variance, 3),
                "overexposed_fraction": round(self.overexposed_fraction, 5),
                "underexposed_fraction": round(self.underexposed_fraction, 5),
                "mean_brightness": round(self.mean_brightness, 3), "problems": list(self.problems)}


def check_image(rgb: np.ndarray, cfg: ImageCheckConfig) -> ImageCheck:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    lap_var = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    over = float(np.mean(rgb.min(axis=2) >= 250))
    under = float(np.mean(rgb.max(axis=2) <= 5))
    mean = float(grey.mean())
    problems = []
    if cfg.enabled:
        if lap_var < cfg.min_laplacian_variance:
            problems.append(f"blurred (Laplacian variance {lap_var:.1f} < {cfg.min_laplacian_variance:g})")
        if over > cfg.max_overexposed_fraction or mean > cfg.max_mean_brightness:
            problems.append(f"overexposed ({over:.1%} clipped, mean {mean:.0f})")
        if under > cfg.max_underexposed_fraction or mean < cfg.min_mean_brightness:
            problems.append(f"underexposed ({under:.1%} black, mean {mean:.0f})")
    return ImageCheck(lap_var, over, under, mean, problems)
