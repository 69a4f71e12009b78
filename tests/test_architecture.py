"""One direction through lds/: each layer imports only itself and the layers below it
(docs/architecture.md). Checked on the source, so a new import that breaks the rule fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a module may import from its own layer and those before it
LAYERS = [
    ("lds.contract", "lds.prior", "lds.data", "lds.distributed"),
    ("lds.models",),
    ("lds.training",),
    ("lds.evaluation",),
    ("lds.experiments",),
    ("lds.cli",),
]


def _layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_every_lds_module_imports_only_its_layer_and_below():
    broken = []
    for path in sorted((ROOT / "lds").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = _layer(module)
        assert own is not None, f"{module} belongs to no layer: add it to LAYERS and the docs"
        for line, imported in _imports(path):
            other = _layer(imported)
            if imported.startswith("lds") and other is None and imported != "lds":
                broken.append(f"{module}:{line} imports {imported}, which belongs to no layer")
            elif other is not None and other > own:
                broken.append(f"{module}:{line} imports {imported} from a higher layer")
    assert not broken, "\n".join(broken)


def test_no_library_module_imports_a_command_line_module():
    for area in ("capture", "robot", "datasets", "common"):
        for path in sorted((ROOT / area).rglob("*.py")):
            if path.name == "cli.py":
                continue
            for line, imported in _imports(path):
                assert not (imported.endswith(".cli") or imported.startswith("lds.cli")
                            or imported == "cli"), f"{path.relative_to(ROOT)}:{line} imports {imported}"


def test_device_interfaces_do_not_import_their_back_ends():
    """capture/camera.py and robot/arm.py are the interfaces; the back ends import them and only
    the registries (capture/cameras.py, robot/backends.py) import the back ends."""
    for interface, backends in (("capture/camera.py", ("capture.opencv_camera", "capture.realsense_camera",
                                                       "capture.sim_camera", "capture.cameras")),
                                ("robot/arm.py", ("robot.sim", "robot.ur", "robot.backends"))):
        imported = {name for _, name in _imports(ROOT / interface)}
        assert not imported & set(backends), f"{interface} imports {imported & set(backends)}"


def test_views_sit_on_top_only_command_line_modules_import_viz_or_rerun():
    """viz/ (Rerun views) is a presentation layer: a library module that imported it, or rerun,
    would make the optional 'view' extra a dependency of the core commands."""
    broken = []
    for area in ("capture", "robot", "datasets", "common", "lds"):
        for path in sorted((ROOT / area).rglob("*.py")):
            if path.name == "cli.py" or "cli" in path.relative_to(ROOT).parts:
                continue
            for line, imported in _imports(path):
                top = imported.split(".")[0]
                if top in ("viz", "rerun"):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not broken, "\n".join(broken)
