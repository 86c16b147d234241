#!/usr/bin/env bash
# The peer tools' benchmark environment, kept apart from the project's .venv (git-ignored).
#
#   bash benchmarks/peers/setup_env.sh        # ~2 min; ~1.5 GB (mostly torch for openfocus)
#
# * openfocus requires torch: the CPU build 2.13.0 is installed first, so pip does not pull the
#   multi-GB CUDA build.
# * rawhdr reads/writes through imageio; tifffile lets it write float TIFF (its 16-bit PNG writer
#   fails with Pillow >= 11).
# * z-stackr is NOT installed: its only wheels are for CPython 3.14 (cp314, not abi3) and its sdist
#   needs a nightly Rust toolchain plus crates.io; neither Python 3.14 nor crates.io is reachable
#   on the project's machines (see docs/PEERS.md).
# * enfuse comes from Debian (package "enfuse"; "enblend-enfuse" on older releases), GNU time
#   (package "time") measures peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
if [ ! -x .bench-venv/bin/python ]; then
    "$PY" -m venv .bench-venv
fi
.bench-venv/bin/pip install -q torch==2.13.0
.bench-venv/bin/pip install -q openfocus==1.72.0 focusweave==2.0.0 rawhdr==0.11.3 \
    focusstacker==0.1.0 tifffile
if ! command -v enfuse >/dev/null || [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq enfuse time
    else
        echo "install Debian packages 'enfuse' and 'time' for those rows" >&2
    fi
fi
.bench-venv/bin/pip list 2>/dev/null | grep -Ei '^(openfocus|focusweave|rawhdr|focusstacker|torch) '
enfuse --version 2>/dev/null | head -1 || true
