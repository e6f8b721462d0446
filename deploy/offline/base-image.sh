#!/usr/bin/env bash
# Where no container registry is reachable (`FROM python:3.11-slim-bookworm` cannot be pulled),
# build an equivalent base image from Debian's packages: debootstrap (minbase) + `docker import`.
# It has what the project's Dockerfiles expect of the public image: python3 (3.11) with venv and
# ensurepip, libpython3.11 (the Python-backend stub links it), CA certificates, C.UTF-8.
#
#   deploy/offline/base-image.sh [TAG]      # default trtserve-base:bookworm-py3.11; ~1 min once
#   BASE_IMAGE=trtserve-base:bookworm-py3.11 docker compose ... build
#
# Idempotent: an existing TAG is kept (FORCE=1 rebuilds). Needs root (debootstrap, docker).
# The apt mirror is the host's (DEBIAN_MIRROR overrides), and the host's CA bundle goes into the
# image so that pip and apt inside builds trust what the host trusts (here a TLS-inspecting
# gateway sits between the machine and PyPI); it holds public certificates only.
set -euo pipefail
TAG="${1:-trtserve-base:bookworm-py3.11}"
SUITE="${SUITE:-bookworm}"
if [[ -z "${FORCE:-}" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG exists"; exit 0
fi
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then  # the host's own Debian mirror (deb822 or one-line sources)
    mirror="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
              | grep -oE '^(URIs:|deb) +https?://[^ ]+' | awk '{print $2}' | grep -v security | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
root="$(mktemp -d /var/tmp/trtserve-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $SUITE from $mirror -> $TAG"
debootstrap --variant=minbase \
    --include=python3,python3-venv,libpython3.11,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -30 "$root.log"; exit 1; }
rm -f "$root.log"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chroot "$root" python3 -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11), sys.version'
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
echo "built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
