#!/usr/bin/env bash
# Unpack the tritonserver binary shipped inside the nvidia-pytriton wheel into .cache/pytriton.
# The wheel pins numpy<2, so it is unpacked beside the project, never installed into .venv.
set -euo pipefail
dest="${1:-.cache/pytriton}"
pip="${PIP:-.venv/bin/pip}"
if [ -x "$dest/pytriton/tritonserver/bin/tritonserver" ]; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --dest "$tmp" "nvidia-pytriton==0.7.0"
mkdir -p "$dest"
python3 -m zipfile -e "$tmp"/nvidia_pytriton-*.whl "$dest"
chmod +x "$dest/pytriton/tritonserver/bin/tritonserver" \
  "$dest"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
echo "tritonserver unpacked into $dest"
