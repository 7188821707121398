#!/bin/sh
# Builds the container image from deploy/kubernetes/Dockerfile (make image):
#   sh deploy/kubernetes/build-image.sh [TAG]        TAG: tcplife-exporter:0.1.0
# With docker where it answers, else podman (with containers.conf beside this
# file). The Dockerfile starts from debian:12 and debian:12-slim; podman without
# them makes both from Debian's archive (mmdebstrap, minbase), so no image
# registry is needed.
set -eu
tag=${1:-tcplife-exporter:0.1.0}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
	exec docker build -f "$here/Dockerfile" -t "$tag" "$repo"
fi
command -v podman >/dev/null 2>&1 || { echo "build-image: neither docker nor podman is installed" >&2; exit 1; }
export CONTAINERS_CONF="$here/containers.conf"
if ! podman image exists debian:12 || ! podman image exists debian:12-slim; then
	command -v mmdebstrap >/dev/null 2>&1 ||
		{ echo "build-image: no debian:12 image, and no mmdebstrap to make one" >&2; exit 1; }
	rootfs=$(mktemp -d)
	trap 'rm -rf "$rootfs"' EXIT
	mmdebstrap --quiet --variant=minbase bookworm "$rootfs/rootfs.tar"
	podman import --quiet "$rootfs/rootfs.tar" debian:12 >/dev/null
	podman tag debian:12 debian:12-slim
fi
# pip's CA bundle on this host, if it has one of its own (a proxy's CA): lent to
# the build's pip, read-only, for the build only.
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
set --
if [ -n "$cert" ] && [ -f "$cert" ]; then
	set -- --volume "$cert:/run/pip-ca.crt:ro" --build-arg PIP_CERT=/run/pip-ca.crt
fi
podman build --quiet --ignorefile "$here/Dockerfile.dockerignore" -f "$here/Dockerfile" \
	"$@" -t "$tag" "$repo" >/dev/null
echo "built $tag"
