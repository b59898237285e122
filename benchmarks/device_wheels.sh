#!/usr/bin/env bash
# Download the wheels a GPU machine without a package index lacks (benchmarks/device_wheels.txt)
# into .whl/ (ignored by git), for benchmarks/gpu_check.sh to install offline:
#
#   bash benchmarks/device_wheels.sh                      # CPython 3.12, manylinux x86_64
#   bash benchmarks/device_wheels.sh --python-version 3.11 --dest DIR
#
# Each package without its dependencies (--no-deps): the list names every one that is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=3.12
DEST=.whl
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYTHON_VERSION="$2"; shift ;;
        --dest) DEST="$2"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "device_wheels.sh: unknown argument $1 (use --python-version X.Y, --dest DIR)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$DEST"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
mapfile -t REQUIREMENTS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' benchmarks/device_wheels.txt | grep -v '^$')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${REQUIREMENTS[@]}"
echo "$(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST for CPython $PYTHON_VERSION:"
du -sh "$DEST"
