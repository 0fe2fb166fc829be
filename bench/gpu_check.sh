#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) on a bare GPU image: torch, transformers and accelerate, no network.
#   1. where PyPI answers:  bash bench/gpu_check.sh --fetch
#      puts the few pure-Python wheels selfpruner's core needs beyond that image into bench/.gpu_wheels/
#      (git-ignored, about 1 MiB; the device tool carries it with `carry: ["bench/.gpu_wheels"]`)
#   2. on the GPU box:      bash bench/gpu_check.sh [gpu_check.py options]     (at most 8 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/.gpu_wheels
if [ "${1:-}" = "--fetch" ]; then
  python3 -m pip download -q --no-deps -d "$WHEELS" sqlite-utils sqlite-fts4 click click-default-group tabulate \
    python-dateutil six pluggy
  du -sh "$WHEELS"
  exit 0
fi
python3 -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
cd bench
exec timeout 480 python3 gpu_check.py "$@"
