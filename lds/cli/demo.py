"""`ldsrig demo`: the main job on the embedded default (lds/experiments/demo.py does the work)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from common.config import load_config
from lds.experiments.demo import DemoConfig, run_demo


def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the stores, runs and report."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with DemoConfig keys."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Overrides, e.g. scenes=8 steps=1000 size=64."),
) -> None:
    """The main job on the embedded default: simulated capture -> training store -> MONet and
    MONet+ -> evaluation -> report (report.md with tables and figures)."""
    cfg = load_config(DemoConfig, config, list(overrides or []))
    console = Console()
    started = time.perf_counter()
    report = run_demo(out, cfg, console)
    console.rule()
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s; report: [bold]{report}[/]")
