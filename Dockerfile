# syntax=docker/dockerfile:1
# sceneparse images, one file, two targets:
#   docker build --target gateway -t sceneparse-gateway .   the FastAPI gateway: no torch, onnxruntime-gpu
#   docker build --target trainer -t sceneparse-trainer .   train / test / export / pipeline, with torch
# docker-compose.yml runs the gateway next to NVIDIA's Triton server.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- base: a virtual environment and an unprivileged user --------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && groupadd --system --gid 1000 sceneparse \
 && useradd --system --uid 1000 --gid sceneparse --create-home --home-dir /home/sceneparse sceneparse

# --- source: only what `pip install .` reads (.dockerignore keeps the rest out) ---------------
FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sceneparse/ sceneparse/
COPY training/ training/
COPY export/ export/
COPY serving/ serving/
COPY retraining/ retraining/

# --- gateway-build: the serve extra with the CUDA build of ONNX Runtime -----------------------
FROM source AS gateway-build
# onnxruntime-gpu 1.31 is built for CUDA 13 (NVIDIA driver >= 580); set 1.22.0 for CUDA 12 drivers.
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
# The serve extra pins the CPU `onnxruntime`; both wheels provide the same module, so swap them.
# The [cuda,cudnn] extras bring the CUDA/cuDNN libraries as wheels; their lib folders are
# registered with the dynamic loader so the CUDA provider finds them without a CUDA base image.
RUN pip install "./[serve]" \
 && pip uninstall --yes onnxruntime \
 && pip install "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}" \
 && find /opt/venv -type d -path "*/site-packages/nvidia/*/lib" > /opt/venv/nvidia-libs.conf \
 && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the gateway' if u.find_spec('torch') else 0)"

# --- gateway: the HTTP server over a mounted model repository ---------------------------------
FROM base AS gateway
COPY --from=gateway-build /opt/venv /opt/venv
RUN cp /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/sceneparse-nvidia.conf && ldconfig
# 0.0.0.0 inside the container needs keys: mount them as secrets and set SCENEPARSE_API_KEYS_FILE
# (docker-compose.yml does), or the gateway refuses to start (docs/security.md).
ENV SCENEPARSE_HOST=0.0.0.0 \
    SCENEPARSE_PORT=8000 \
    SCENEPARSE_REPOSITORY=/models \
    SCENEPARSE_BACKEND=onnxruntime
WORKDIR /home/sceneparse
USER 1000:1000
EXPOSE 8000
# Liveness only (/healthz); /readyz also waits for the backend and a model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCENEPARSE_PORT', '8000'), timeout=4)"]
CMD ["sceneparse", "serve", "--host", "0.0.0.0", "--repository", "/models"]

# --- trainer: torch, for train / test / export / pipeline -------------------------------------
FROM source AS trainer-build
RUN pip install "./[train,serve]"

FROM base AS trainer
COPY --from=trainer-build /opt/venv /opt/venv
# Configs name relative paths (dataset/..., exp/..., initmodel/...): mount them under /workspace.
WORKDIR /workspace
RUN chown 1000:1000 /workspace
USER 1000:1000
ENTRYPOINT ["sceneparse"]
CMD ["--help"]
