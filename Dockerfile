# ftstudio: one image for the web server and the GPU workers (docs/deploy.md).
#   docker compose up -d                       (web + worker + redis, see docker-compose.yml)
#   docker build -t ftstudio . && docker run --gpus all -v ftstudio-data:/data ftstudio worker
# The entrypoint is the `ftstudio` CLI; the default command is the web server with logins on.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04 ships Python 3.12 (ftstudio needs 3.10+); build-essential for any source builds
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv $VIRTUAL_ENV

# The CUDA 12.8 build of PyTorch first (pyproject only asks for torch>=2.4, which this meets),
# in its own layer so code changes do not download it again.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url $TORCH_INDEX "torch>=2.4"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY jobs ./jobs
COPY static ./static
# Editable: static/ (examples, CSS, logo) is read next to the packages, and the worker starts
# job processes with PYTHONPATH=/app. The extra "redis" brings the client for FTSTUDIO_REDIS_URL,
# "gpu" Liger's fused kernels (train.kernels=auto uses them on the GPU workers), "trackers"
# TensorBoard, MLflow and W&B for train.report_to (teams keep their runs in their own tracker).
RUN pip install -e ".[redis,gpu,trackers]" \
 && python -c "import torch, engine.training.loop, jobs.worker, app.cli"

# A non-root user owns the data volume; the code stays root-owned and read-only to it.
# /app/studio-data points at it, so the examples' paths (studio-data/models/demo in demo.yaml)
# work as written from /app: `ftstudio submit /app/static/examples/demo.yaml`.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ftstudio \
 && mkdir -p /data && chown ftstudio:ftstudio /data && ln -s /data /app/studio-data
ENV FTSTUDIO_HOME=/data \
    HF_HOME=/data/hf-cache \
    FTSTUDIO_HOST=0.0.0.0 \
    FTSTUDIO_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME /data
USER ftstudio
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"]

ENTRYPOINT ["ftstudio"]
CMD ["serve", "--no-worker", "--host", "0.0.0.0", "--auth"]
