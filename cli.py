"""ldsrig: capture table-top scenes with a camera on a robot arm, train multi-object VAEs with and
without the LDS prior, and evaluate them.

Each area owns its commands (datasets/cli.py, robot/cli.py, capture/cli.py, lds/cli/train.py); this
file only mounts them and turns user errors into one clear line instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from common.errors import UserError

try:  # typer >= 0.29 vendors click; older releases use the click package
    from typer._click import ClickException as _ClickException
except ImportError:
    from click import ClickException as _ClickException

app = typer.Typer(
    name="ldsrig",
    help=__doc__.split("\n\n")[0],
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (module, attribute, name, help): sub-apps mounted as `ldsrig NAME ...`.
_GROUPS = [
    ("datasets.cli", "app", "data", "Scene stores: inspect, check, prepare, synthesise, import."),
    ("robot.cli", "app", "robot", "The arm: configuration, viewpoint planning, state, homing."),
    ("capture.cli", "capture_app", "capture", "Capture scenes at the rig (or the simulated rig)."),
    ("capture.cli", "calib_app", "calib", "Camera intrinsics and hand-eye calibration."),
    ("lds.cli.train", "train_app", "train", "Train a model with or without the LDS prior."),
    ("lds.cli.experiment", "experiment_app", "experiment", "Run and report the paper's studies."),
]
# (module, attribute, name): single commands mounted as `ldsrig NAME ...`.
_COMMANDS = [
    ("lds.cli.evaluate", "eval_command", "eval"),
    ("lds.cli.evaluate", "compare_command", "compare"),
    ("lds.cli.experiment", "gap_command", "gap"),
    ("lds.cli.demo", "demo_command", "demo"),
]


def _load(module: str, attr: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:  # the area has no commands yet
            return None
        raise
    return getattr(mod, attr, None)


for _module, _attr, _name, _help in _GROUPS:
    _sub = _load(_module, _attr)
    if _sub is not None:
        app.add_typer(_sub, name=_name, help=_help)
for _module, _attr, _name in _COMMANDS:
    _fn = _load(_module, _attr)
    if _fn is not None:
        app.command(_name)(_fn)


def run() -> int:
    """Run the app; user errors become one line on stderr.  Returns the exit code."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        return code if isinstance(code, int) else 0
    except UserError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.secho("aborted", fg=typer.colors.YELLOW, err=True)
        return 1
    except _ClickException as exc:  # usage errors: a bad option, a missing argument
        exc.show()
        return exc.exit_code


def main() -> None:
    code = run()
    if "spatialgeometry" in sys.modules:
        # roboticstoolbox's nanobind extension (spatialgeometry) prints pages of "leaked
        # instance" warnings while the interpreter tears modules down.  Run the exit handlers
        # ourselves, then leave without the teardown; every file is closed and flushed by then.
        import atexit
        import os

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
