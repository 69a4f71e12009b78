#!/usr/bin/env bash
# Sets up ldsrig on a fresh machine: system libraries Python wheels need, a virtual environment
# .venv at the repository root, the right torch build, and the project itself (editable, with the
# test tools and the colmap extra).  Safe to run again: it skips what is already done.
#
#   TORCH_VERSION   torch release to install (default 2.13.0)
#   TORCH_INDEX_URL wheel index to take torch from (default: CPU wheels on a machine without an
#                   NVIDIA GPU when no local CPU build is found; PyPI's default CUDA build with one)
#   LDSRIG_EXTRAS   optional extras to install with the project (default dev,view,colmap: the test
#                   tools, rerun-sdk for the Rerun views (a 165 MB wheel, about 0.5 GB installed)
#                   and pycolmap for COLMAP export/import and the pose audit (38 MB); with
#                   LDSRIG_EXTRAS=dev the views' tests skip and the COLMAP tests fail)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LDSRIG_EXTRAS="${LDSRIG_EXTRAS:-dev,view,colmap}"
PYTHON="${PYTHON:-python3}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. System libraries.  pyrealsense2's wheel links against libusb-1.0 and does not import without it.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
        say "installing libusb-1.0-0 (needed by pyrealsense2)"
        $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null \
            || say "could not install libusb-1.0-0; RealSense cameras will be unavailable"
    else
        say "libusb-1.0 not found and no apt-get; install it for RealSense support"
    fi
fi

# 2. The virtual environment.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($PYTHON --version)"
    $PYTHON -m venv .venv
fi
PIP=".venv/bin/python -m pip"

# 3. torch: CPU build without a GPU (a CUDA build is several GB), PyPI's CUDA build with one.
#    A local CPU wheel (pip's find-links, as on build machines) is preferred; otherwise the
#    CPU index is asked once, briefly, so an unreachable index costs one line, not a retry storm.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        say "NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build) from ${TORCH_INDEX_URL:-PyPI}"
        $PIP install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
    elif [ -z "${TORCH_INDEX_URL:-}" ] && $PIP install -q --no-deps --no-index "torch==$TORCH_VERSION" >/dev/null 2>&1 \
            && .venv/bin/python -c "import sys, importlib.metadata as m; sys.exit('+cpu' not in m.version('torch'))" 2>/dev/null; then
        # torch's own dependencies (sympy, networkx, ...) come from the normal index.
        $PIP install -q "torch==$TORCH_VERSION"
        say "no GPU: installed torch==$TORCH_VERSION, CPU build, from a local wheel ($(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))'))"
    else
        $PIP uninstall -q -y torch >/dev/null 2>&1 || true       # a local non-CPU build, if any
        index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
        if [ -z "${TORCH_INDEX_URL:-}" ] && ! $PIP download -q --no-deps --retries 0 --timeout 15 \
                --index-url "$index" -d "$(mktemp -d)" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
            say "no GPU, and the CPU index $index is unreachable: installing torch==$TORCH_VERSION from PyPI (a CUDA build, several GB)"
            $PIP install -q "torch==$TORCH_VERSION"
        else
            say "no GPU: installing torch==$TORCH_VERSION, CPU build, from $index"
            $PIP install -q --index-url "$index" "torch==$TORCH_VERSION"
        fi
    fi
fi

# 4. The project, its test tools, the Rerun views and pycolmap; re-run only when pyproject.toml or the
#    extras changed.
stamp=".venv/.ldsrig-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $LDSRIG_EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing ldsrig[$LDSRIG_EXTRAS] and its dependencies into .venv"
    $PIP install -q -e ".[$LDSRIG_EXTRAS]"
    echo "$want" > "$stamp"
fi
