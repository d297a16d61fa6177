# syntax=docker/dockerfile:1
# The flanscale image: the `flanscale` CLI, the Ray runtime for KubeRay head/worker pods, and
# the MLflow tracking server. One Dockerfile, three variants chosen by ACCELERATOR:
#
#   docker build --build-arg ACCELERATOR=cuda -t REGISTRY/flanscale:0.1.0-cuda .   # NVIDIA GPUs
#   docker build --build-arg ACCELERATOR=tpu  -t REGISTRY/flanscale:0.1.0-tpu  .   # Cloud TPU
#   docker build --build-arg ACCELERATOR=cpu  -t REGISTRY/flanscale:0.1.0-cpu  .   # CPU only
#
# JAX's CUDA wheels bring their own CUDA/cuDNN libraries, so no CUDA base image is needed:
# the node only supplies the driver (GKE mounts it into GPU pods).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG ACCELERATOR=cuda
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/flanscale/bin:$PATH
RUN python -m venv /opt/flanscale
WORKDIR /src
# Dependencies before sources, so editing code does not reinstall them. The pins are read
# from pyproject.toml; only the jax extra (cuda12 / tpu / cpu) depends on ACCELERATOR.
COPY pyproject.toml ./
COPY k8s/image/requirements.py /tmp/requirements.py
RUN python /tmp/requirements.py pyproject.toml "${ACCELERATOR}" > /tmp/requirements.txt \
    && pip install --upgrade pip==26.3 \
    && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY orchestrator ./orchestrator
COPY trainers ./trainers
COPY dashboards ./dashboards
RUN pip install --no-deps . \
    && python -c "import orchestrator.cli, trainers.spec, ray, mlflow, jax"

FROM ${PYTHON_IMAGE}
ARG ACCELERATOR=cuda
LABEL org.opencontainers.image.title="flanscale" \
      org.opencontainers.image.description="Instruction-finetuning scaling sweeps on Ray/JAX/MLflow" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.flanscale.accelerator="${ACCELERATOR}"
# wget: KubeRay's default health probes of Ray containers call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 flanscale \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash flanscale
COPY --from=build /opt/flanscale /opt/flanscale
# Sweep files, so `flanscale sweep run sweeps/demo.yaml` works from the working directory.
COPY --chown=root:root sweeps /app/sweeps
ENV PATH=/opt/flanscale/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLANSCALE_HOME=/data/flanscale \
    HOME=/home/flanscale
WORKDIR /app
# Numeric user, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000
CMD ["flanscale", "--help"]
