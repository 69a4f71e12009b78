"""The simulated webcam: what a cheap USB camera does to the scene radiance, as its own term.

The renderer gives linear radiance with (ideally) negligible Monte Carlo error; this module
turns it into the 8-bit sRGB image a webcam would have written.  Two parts, drawn per view:

* **photometric** (deterministic given the drawn settings): auto-exposure error (log-normal,
  sigma 0.2), white-balance error on red and blue (log-normal, sigma 0.06), radial vignetting
  (1 - v r^2, v in [0.1, 0.3], r = 1 at the image corners);
* **sensor noise** (random): Poisson shot noise with a full well of 300-1200 photo-electrons at
  white, Gaussian read noise (std 0.002-0.006 of white), then the sRGB curve and 8-bit
  quantisation.

``benchmarks/bench_render_noise.py`` measures the sensor-noise term against the renderer's Monte
Carlo error at the same resolution (docs/synthetic.md has the figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from datasets.synth import render


@dataclass(frozen=True)
class WebcamSettings:
    """One view's drawn camera behaviour (stored per scene, so a view's look can be explained)."""

    exposure: float
    white_balance: tuple[float, float, float]
    vignetting: float
    full_well: float        # photo-electrons at white: sets the shot noise
    read_noise: float       # std of the read noise, as a fraction of white

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "WebcamSettings":
        exposure = float(np.exp(rng.normal(0.0, 0.2)))
        white_balance = (float(np.exp(rng.normal(0.0, 0.06))), 1.0, float(np.exp(rng.normal(0.0, 0.06))))
        return cls(exposure, white_balance, float(rng.uniform(0.1, 0.3)),
                   float(rng.uniform(300.0, 1200.0)), float(rng.uniform(0.002, 0.006)))

    def to_metadata(self) -> dict:
        return asdict(self) | {"white_balance": list(self.white_balance)}


def photometric(linear: np.ndarray, settings: WebcamSettings) -> np.ndarray:
    """Exposure, white balance and vignetting applied to linear radiance (H, W, 3), clipped >= 0."""
    h, w = linear.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    gain = settings.exposure * np.asarray(settings.white_balance)
    return np.clip(linear * gain * (1.0 - settings.vignetting * r2)[..., None], 0.0, None)


def sensor_noise(signal: np.ndarray, settings: WebcamSettings, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian sensor noise on a linear signal (white = 1)."""
    shot = rng.poisson(signal * settings.full_well) / settings.full_well
    return shot + rng.normal(0.0, settings.read_noise, signal.shape)


def webcam_image(linear: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """sRGB uint8 image of linear radiance through a freshly drawn webcam, and its settings."""
    settings = WebcamSettings.draw(rng)
    noisy = sensor_noise(photometric(linear, settings), settings, rng)
    return render.to_uint8(render.linear_to_srgb(noisy)), settings.to_metadata()
