"""Import modules from a checkout of applied-ai-lab/genesis (read from a path, never copied).

experiments/monet_vs_public.py (its MONet) and experiments/genesis_vs_official.py (its GENESIS
and GECO) both import the public code this way. Its modules import packages this project does
not install (forge's flags, attrdict, tensorflow, sklearn, simplejson) for things the
comparisons do not use; stand-ins take their place while the modules import, and only then:
afterwards nothing else in the process sees a fake tensorflow. forge's DEFINE_* calls are
recorded, so the caller gets the flag defaults the modules declare (their configuration).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path


class AttrDict(dict):
    """attrdict.AttrDict as the public code uses it: keys are also attributes (a missing one
    raises AttributeError, as its hasattr checks need)."""

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    __setattr__ = dict.__setitem__


def _stand_ins(flag_defaults: dict) -> dict:
    names = ("forge", "forge.flags", "forge.experiment_tools", "attrdict", "tensorflow",
             "sklearn", "sklearn.metrics")
    fake = {name: types.ModuleType(name) for name in names}
    for kind in ("integer", "float", "string", "boolean"):
        setattr(fake["forge.flags"], f"DEFINE_{kind}",
                lambda name, default, *a, **k: flag_defaults.setdefault(name, default))
    fake["forge"].flags = fake["forge.flags"]
    fake["forge"].experiment_tools = fake["forge.experiment_tools"]
    fake["forge.experiment_tools"].fprint = print
    fake["attrdict"].AttrDict = AttrDict
    fake["sklearn"].metrics = fake["sklearn.metrics"]
    fake["sklearn.metrics"].adjusted_rand_score = None
    return {**fake, "simplejson": __import__("json")}


def import_from_checkout(src: Path, names: list[tuple[str, str]]) -> tuple[list, dict]:
    """([getattr(module, attr) for each (module, attr) in names], the flag defaults declared).

    A missing file or a failing import exits with one line naming the checkout."""
    missing = [m for m, _ in names if not (src / (m.replace(".", "/") + ".py")).is_file()]
    if missing:
        raise SystemExit(f"error: {src} is not a checkout of applied-ai-lab/genesis (no "
                         f"{', '.join(m.replace('.', '/') + '.py' for m in missing)})")
    defaults: dict = {}
    fakes = _stand_ins(defaults)
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    sys.path.append(str(src))                 # after ours: our packages keep their names
    try:
        return [getattr(importlib.import_module(m), attr) for m, attr in names], defaults
    except Exception as exc:                  # another version of the repository, say
        raise SystemExit(f"error: cannot import {', '.join(m for m, _ in names)} from {src}: "
                         f"{exc!r}") from None
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
