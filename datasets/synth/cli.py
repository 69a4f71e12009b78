"""`ldsrig data synth ...`: render synthetic multi-view scene stores with Mitsuba 3 (CPU)."""

from __future__ import annotations

from pathlib import Path

import typer

synth_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Render synthetic multi-view scenes with Mitsuba 3 (exact masks and poses).")

_OUT = typer.Argument(..., help="Scene store to create, or to resume (same settings) if it exists.")


def _run(out: Path, generator: str, settings, scenes: int, workers: int, quiet: bool) -> None:
    from datasets.synth.generate import generate

    report = generate(out, generator, settings, scenes, workers=workers, progress=not quiet)
    typer.echo(report.line())


@synth_app.command("clevr-mv")
def clevr_mv(
    out: Path = _OUT,
    scenes: int = typer.Option(..., "--scenes", "-n", help="Number of scenes the store should hold."),
    views: int = typer.Option(10, help="Views per scene, evenly spaced on the camera circle."),
    size: int = typer.Option(64, help="Image width and height in pixels."),
    min_objects: int = typer.Option(2, help="Fewest objects per scene (3 components with the background)."),
    max_objects: int = typer.Option(5, help="Most objects per scene (6 components with the background)."),
    shapes: str = typer.Option("basic", help="basic: cube, sphere, cylinder.  complex: also cone, "
                               "torus, capsule, twisted prism, duck (a Dolphin-like variant)."),
    spp: int = typer.Option(144, help="Path-tracing samples per pixel (multi-jittered; a product of two near-equal integers, e.g. 144 = 12 x 12)."),
    min_visible_pixels: int = typer.Option(10, help="Re-sample a scene unless every object shows at "
                                           "least this many pixels in every view (at 64x64; scaled with area)."),
    seed: int = typer.Option(0, help="Seed; scene i uses (seed, i), independent of --workers."),
    workers: int = typer.Option(1, "--workers", "-j", help="Rendering processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """CLE-MV-like scenes: CLEVR objects (rubber/metal, 8 colours, 2 sizes), V views on a circle."""
    from datasets.synth.generate import ClevrMVSettings

    settings = ClevrMVSettings(views=views, size=size, min_objects=min_objects, max_objects=max_objects,
                               shapes=shapes, spp=spp, min_visible_pixels=min_visible_pixels, seed=seed)
    _run(out, "clevr-mv", settings, scenes, workers, quiet)


@synth_app.command("cubes")
def cubes(
    out: Path = _OUT,
    scenes: int = typer.Option(..., "--scenes", "-n", help="Number of scenes the store should hold."),
    views: int = typer.Option(25, help="Views per scene."),
    width: int = typer.Option(640, help="Image width in pixels."),
    height: int = typer.Option(480, help="Image height in pixels."),
    spp: int = typer.Option(144, help="Path-tracing samples per pixel (multi-jittered; 144 keeps Monte Carlo error near 0.3x the webcam noise, docs/synthetic.md)."),
    min_cubes: int = typer.Option(2, help="Fewest cubes per scene."),
    max_cubes: int = typer.Option(4, help="Most cubes per scene."),
    min_elevation: float = typer.Option(25.0, help="Lowest camera elevation above the table, degrees."),
    max_elevation: float = typer.Option(65.0, help="Highest camera elevation, degrees."),
    min_azimuth: float = typer.Option(0.0, help="Azimuth range start, degrees (0 = world +x)."),
    max_azimuth: float = typer.Option(360.0, help="Azimuth range end, degrees."),
    min_distance: float = typer.Option(0.25, help="Nearest camera distance to the aim point, metres."),
    max_distance: float = typer.Option(0.35, help="Farthest camera distance, metres."),
    placement: float = typer.Option(0.08, help="Cube centres lie within +-this many metres of the table centre."),
    fov: float = typer.Option(62.0, help="Horizontal field of view, degrees."),
    noise: bool = typer.Option(True, "--noise/--no-noise", help="Webcam-like exposure, white balance, vignetting and sensor noise."),
    seed: int = typer.Option(0, help="Seed; scene i uses (seed, i), independent of --workers."),
    workers: int = typer.Option(1, "--workers", "-j", help="Rendering processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Rig-like scenes: 2-4 coloured cubes on a white table, look-at views from a spherical cap."""
    from datasets.synth.generate import CubesSettings

    settings = CubesSettings(views=views, width=width, height=height, spp=spp, min_cubes=min_cubes,
                             max_cubes=max_cubes, elevation_deg=(min_elevation, max_elevation),
                             azimuth_deg=(min_azimuth, max_azimuth), radius_m=(min_distance, max_distance),
                             placement_half_width_m=placement, fov_x_deg=fov, noise=noise, seed=seed)
    _run(out, "cubes", settings, scenes, workers, quiet)
