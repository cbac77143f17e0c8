#!/usr/bin/env bash
# Unpack the tritonserver binary shipped inside the nvidia-pytriton wheel into DEST
# (default .cache/pytriton) for the real-Triton tests (tests/serving/triton/harness.py).
# The wheel pins numpy<2, so it is unpacked beside the project, never installed into .venv.
# Usage: scripts/fetch_tritonserver.sh [DEST]   (PIP=path/to/pip, PYTHON=the venv's python)
set -euo pipefail
dest="${1:-.cache/pytriton}"
pip="${PIP:-.venv/bin/pip}"
python="${PYTHON:-$(dirname "$pip")/python}"
version="0.7.0"
binary="$dest/pytriton/tritonserver/bin/tritonserver"

if [ ! -x "$binary" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$pip" download --quiet --no-deps --dest "$tmp/wheel" "nvidia-pytriton==$version"
  # Unpack next to DEST and rename: an interrupted run never leaves a half-unpacked DEST behind.
  mkdir -p "$(dirname "$dest")"
  staging="$(mktemp -d "$(dirname "$dest")/.pytriton-XXXXXX")"
  python3 -m zipfile -e "$tmp"/wheel/nvidia_pytriton-*.whl "$staging"
  chmod +x "$staging/pytriton/tritonserver/bin/tritonserver" \
    "$staging"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
  rm -rf "$dest"
  mv "$staging" "$dest"
  echo "tritonserver (nvidia-pytriton $version) unpacked into $dest"
fi

# The python backend's stub must match the Python that runs the tests, and it links the system's
# libpython of that version: say so now rather than as a model-load failure in the tests.
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)"
stub="$dest/pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub"
if [ ! -f "$stub" ]; then
  echo "warning: no python backend stub for Python $pyver in $dest (the real-Triton tests will fail)" >&2
elif missing="$(LD_LIBRARY_PATH="$dest/nvidia_pytriton.libs" ldd "$stub" 2>/dev/null | grep 'not found')"; then
  echo "warning: the Python $pyver backend stub lacks shared libraries (install libpython$pyver):" >&2
  echo "$missing" >&2
fi
