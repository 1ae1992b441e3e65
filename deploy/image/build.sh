#!/usr/bin/env bash
# Build the Fulcrum image (the extender, the rebuild controller and the webhook: `fulcrum serve`,
# `fulcrum rebuild`, `fulcrum webhook`) with buildah, from Debian packages and the project's
# wheel; no base image is pulled from a registry.
#
#   deploy/image/build.sh            (as root; `make image` runs it)
#
# 1. the project's wheel, built from this checkout;
# 2. a Debian 12 (bookworm) root made by `debootstrap --variant=minbase` with python3 (3.11)
#    from DEBIAN_MIRROR, brought up to date from bookworm-updates and bookworm-security;
# 3. a venv at /opt/fulcrum with the wheel and its dependencies at the versions pinned in
#    deploy/image/constraints.txt;
# 4. fulcrum-ipam, the CNI plugin (node/ipam, static Go), at /opt/fulcrum/bin/fulcrum-ipam;
# 5. then out go what only installing needs (python3-venv, pip, setuptools, apt's lists and
#    caches) and docs; no compiler is ever installed. It runs as the numeric user 65532
#    (runAsNonRoot).
#
# Result: the image $IMAGE (default fulcrum:<project version>, what charts/fulcrum runs by
# default; buildah lists it as localhost/fulcrum). Push it where your nodes pull from:
#   buildah push fulcrum:0.1.0 docker://REGISTRY/fulcrum:0.1.0
# Needs: buildah, debootstrap (apt-get install buildah debootstrap), and PYTHON (default
# python3) with pip, to build the wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
IMAGE="${IMAGE:-fulcrum:$VERSION}"
SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
VENV=/opt/fulcrum

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build.sh: needs $tool (apt-get install buildah debootstrap)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap and buildah mount need it)" >&2; exit 1; }

work="$(mktemp -d)"
ctr=""
cleanup() {
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo "== $(date +%T) $*"; }

step "wheel"
# from a copy, so that setuptools leaves no build/ behind in the checkout
mkdir "$work/src"
tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
  --exclude='__pycache__' --exclude='./.*_cache' --exclude=./.hypothesis . | tar -xf - -C "$work/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/fulcrum-*.whl)"

step "Debian $SUITE root (debootstrap --variant=minbase) from $DEBIAN_MIRROR"
ctr="$(buildah from scratch)"
root="$(buildah mount "$ctr")"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$root" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
cat >"$root/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $SUITE main
deb $DEBIAN_MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# chroot isolation: no OCI runtime, so it also works where crun cannot set up cgroups (a
# container or sandbox); the host's network and resolv.conf.
run() { buildah run --isolation chroot "$ctr" -- "$@"; }
run sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq >/dev/null'

step "venv $VENV: $(basename "$wheel") with deploy/image/constraints.txt"
mkdir -p "$root/tmp/fulcrum"
cp "$wheel" deploy/image/constraints.txt "$root/tmp/fulcrum/"
# pip runs in the image's own Python (so it picks wheels for it), trusting what this machine
# trusts (a proxy's CA, say) and using its index, for this step only: /tmp is emptied below.
cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/tmp/fulcrum/ca.crt"
pip_env=(--env PIP_CERT=/tmp/fulcrum/ca.crt --env PIP_NO_CACHE_DIR=1 --env PIP_DISABLE_PIP_VERSION_CHECK=1)
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT; do
  if [ -n "${!var:-}" ]; then pip_env+=(--env "$var=${!var}"); fi
done
run python3 -m venv "$VENV"
buildah run --isolation chroot "${pip_env[@]}" "$ctr" -- "$VENV/bin/pip" install --quiet \
  --only-binary=:all: -c /tmp/fulcrum/constraints.txt "/tmp/fulcrum/$(basename "$wheel")"
run "$VENV/bin/fulcrum" --version

step "fulcrum-ipam (node/ipam): the CNI plugin the chart's cni DaemonSet installs on nodes"
command -v go >/dev/null || { echo "build.sh: needs Go (>= 1.24) to build node/ipam" >&2; exit 1; }
mkdir -p "$root/opt/fulcrum/bin"
(cd node/ipam && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
  go build -trimpath -ldflags "-s -w" -o "$root/opt/fulcrum/bin/fulcrum-ipam" .)

step "strip what only installing needs"
run "$VENV/bin/python" -m pip uninstall --quiet -y setuptools pip
run sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq python3-venv python3.11-venv \
  python3-pip-whl python3-setuptools-whl >/dev/null'
# no compiler, no installer: fail if one is there
run sh -c 'dpkg-query -W -f "\${Package}\n" | grep -xE "(gcc|cpp|g\+\+|make|libc6-dev|python3(\.11)?-(dev|pip|venv|pip-whl|setuptools-whl))(-[0-9]+)?" && exit 1 || true'
rm -rf "$root"/tmp/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
buildah umount "$ctr" >/dev/null

step "image config"
buildah config \
  --user 65532:65532 \
  --workingdir / \
  --env PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env PYTHONUNBUFFERED=1 \
  --env PYTHONDONTWRITEBYTECODE=1 \
  --env HOME=/tmp \
  --entrypoint '["fulcrum"]' \
  --cmd '["serve", "--config", "/etc/fulcrum/extender.yaml", "--host", "127.0.0.1", "--port", "8888"]' \
  --label org.opencontainers.image.title=fulcrum \
  --label org.opencontainers.image.version="$VERSION" \
  --label org.opencontainers.image.base.name="debian:$SUITE (debootstrap minbase)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
ctr=""
step "built $IMAGE"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -F "/${IMAGE%%:*}:${IMAGE##*:}" || true
