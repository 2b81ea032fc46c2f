#!/usr/bin/env bash
# Build the two base images the smoke run needs from Debian's packages, for a machine that
# reaches Debian's mirrors but no container registry (no rayproject/ray, no redis image):
#
#   deploy/base-image.sh ray     -> localhost/critic-unlearn-base:py311-bookworm
#   deploy/base-image.sh redis   -> localhost/critic-unlearn-redis:bookworm
#   deploy/base-image.sh all     (both)     --force: rebuild even if the image is up to date
#
# `ray` stands in for rayproject/ray:<version>-py311-cpu as far as deploy/Dockerfile needs it:
# Debian bookworm with Python 3.11 (python3-venv: the Dockerfile makes its own venv and installs
# Ray 2.60.0 into it with scripts/install.sh, exactly as on the official image), bash, the
# non-root user `ray` with uid 1000 in group `users` (gid 100) and home /home/ray, and
# USER ray. `redis` is Debian's redis-server (and redis-cli, which the healthcheck runs), as user
# `redis`, with /data owned by it like the official image's.
#
# mmdebstrap writes a root file system as a tar stream (no root needed for `--mode=unshare`;
# as root it uses `--mode=root`), and `podman import` (or `docker import`) makes it an image.
# An image is rebuilt only when this script changed: its label cu.recipe is this file's hash.
# ENGINE=docker|podman picks the engine (default: the first of podman, docker that answers).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
what=${1:-all}
force=${2:-}
suite=bookworm
python_tag=$(sed -n 's/^ARG PYTHON_TAG=//p' "$here/Dockerfile")  # py311
python_version="${python_tag#py}"; python_version="${python_version:0:1}.${python_version:1}"
RAY_BASE=${RAY_BASE:-localhost/critic-unlearn-base:${python_tag}-${suite}}
REDIS_BASE=${REDIS_BASE:-localhost/critic-unlearn-redis:${suite}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
recipe=$(sha256sum "$0" | cut -c1-16)

die() { echo "base-image.sh: $*" >&2; exit 1; }
command -v mmdebstrap >/dev/null || die "needs mmdebstrap (apt-get install mmdebstrap)"
if [ -z "${ENGINE:-}" ]; then
  for e in podman docker; do
    if command -v "$e" >/dev/null && "$e" info >/dev/null 2>&1; then ENGINE=$e; break; fi
  done
fi
[ -n "${ENGINE:-}" ] || die "no working container engine (podman or docker)"

up_to_date() {  # image exists and was made by this very script
  [ "$force" != --force ] &&
    [ "$("$ENGINE" image inspect --format '{{ index .Config.Labels "cu.recipe" }}' "$1" \
      2>/dev/null)" = "$recipe" ]
}

# mmdebstrap ROOTFS_PACKAGES HOOK... | ENGINE import --change ... - TAG
build() {
  local tag=$1 packages=$2 hook=$3; shift 3
  if up_to_date "$tag"; then echo "$tag is up to date (recipe $recipe)"; return; fi
  local mode=unshare; [ "$(id -u)" = 0 ] && mode=root
  local t0=$SECONDS
  mmdebstrap --quiet --mode="$mode" --variant=minbase --format=tar \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/{doc,man,info,locale}/*' \
    --include="$packages" \
    --customize-hook="$hook" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" - \
    "deb $MIRROR $suite main" "deb $MIRROR $suite-updates main" \
    "deb $SECURITY_MIRROR $suite-security main" |
    "$ENGINE" import --change "LABEL cu.recipe=$recipe" "$@" - "$tag" >/dev/null
  echo "built $tag in $((SECONDS - t0)) s ($("$ENGINE" image inspect --format '{{.Size}}' "$tag" \
    | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

build_ray() {
  build "$RAY_BASE" "python3,python3-venv,ca-certificates,bash,procps,netbase" \
    'chroot "$1" useradd --create-home --uid 1000 --gid users --shell /bin/bash ray
     v=$(chroot "$1" python3 -c "import sys; print(*sys.version_info[:2], sep=\".\")")
     [ "$v" = '"$python_version"' ] || { echo "base Python is $v, not '"$python_version"'" >&2; exit 1; }' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'USER ray' \
    --change 'WORKDIR /home/ray' \
    --change 'CMD ["bash"]'
}

build_redis() {
  build "$REDIS_BASE" "redis-server,redis-tools" \
    'mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'USER redis' \
    --change 'WORKDIR /data' \
    --change 'CMD ["redis-server"]'
}

case $what in
  ray) build_ray ;;
  redis) build_redis ;;
  all) build_ray; build_redis ;;
  *) die "usage: $0 ray|redis|all [--force]" ;;
esac
