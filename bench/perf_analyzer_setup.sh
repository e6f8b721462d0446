#!/usr/bin/env bash
# Print the perf_analyzer command for this machine (for $PERF_ANALYZER), preparing it once:
#   * natively, when the perf-analyzer wheel's binary runs here (glibc >= 2.38, e.g. the GPU host);
#   * else in a Debian trixie container (docker), made with debootstrap from the apt mirror
#     (no registry is reachable; /work/shared/ENVIRONMENT.md), the wheel's binary bind-mounted.
# Prints nothing (exit 1) when neither works: `make bench` then reports the Python client only.
# Cached under $CACHE (default .cache/perf_analyzer). Never starts or stops a Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-$PWD/.cache/perf_analyzer}
PY=${PY:-.venv/bin/python}
IMAGE=trtserve-perf-analyzer:trixie
mkdir -p "$CACHE"
BIN=$CACHE/perf_analyzer/bin/perf_analyzer
if [ ! -x "$BIN" ]; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
        --python-version 3.11 -d "$CACHE/wheel" perf-analyzer==2.60.0 >&2
    "$PY" -m zipfile -e "$CACHE"/wheel/perf_analyzer-2.60.0-*.whl "$CACHE" >&2
    chmod +x "$BIN"
fi
if "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "perf_analyzer: no glibc >= 2.38 and no Docker daemon" >&2; exit 1; }
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    MIRROR=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null || true)
    ROOTFS=$(mktemp -d)
    debootstrap --variant=minbase trixie "$ROOTFS" "${MIRROR:-http://deb.debian.org/debian}" >&2
    tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >&2
    rm -rf "$ROOTFS"
fi
# --network host: the server's loopback ports; the input data and CSVs are under /tmp
echo "docker run --rm --network host -v /tmp:/tmp -v $CACHE/perf_analyzer:/pa:ro $IMAGE /pa/bin/perf_analyzer"
