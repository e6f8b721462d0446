#!/usr/bin/env bash
# Images for hosts where no container registry is reachable (this project's CI machines): the
# base image from Debian packages (base-image.sh) and Prometheus from Debian's package. Prints
# the variables to hand to docker compose:
#   eval "$(deploy/offline/images.sh)"     # BASE_IMAGE=... PROMETHEUS_IMAGE=...
# Idempotent; existing images are kept (FORCE=1 rebuilds).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="${BASE_IMAGE:-trtserve-base:bookworm-py3.11}"
prometheus="${PROMETHEUS_IMAGE:-trtserve-prometheus:bookworm}"
"$here/base-image.sh" "$base" >&2
if [[ -n "${FORCE:-}" ]] || ! docker image inspect "$prometheus" >/dev/null 2>&1; then
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$base" -t "$prometheus" \
        -f "$here/prometheus.Dockerfile" "$here" >&2
fi
echo "export BASE_IMAGE=$base PROMETHEUS_IMAGE=$prometheus"
