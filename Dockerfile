#
# The metaocl image: the locked Python stack (requirements.lock), the package and its sweep files,
# with the `metaocl` CLI as the entrypoint, so that
#
#     docker build -t metaocl:latest .
#     docker run --gpus all --shm-size=8g -v metaocl-runs:/runs -v metaocl-cache:/cache \
#         metaocl sweep batch_size
#
# works as written, on a new machine with an empty metaocl-cache volume: the sweep first fetches
# what it needs and is missing (CVDB / T-REx / MNIST, checksummed; each Hugging Face model of the
# sweep, from $HF_ENDPOINT) into /cache, once, then runs the trials with the hub offline. Nothing
# manual comes first (no `metaocl data download`); `--no-fetch` uses only what /cache holds.
# docs/first-run.md. The same image serves every role of a cluster: docker/compose.yaml and
# docker/kuberay/ override the command with `ray start ...` or `mlflow server ...`; `bash`, `ray`
# and `mlflow` are on the PATH for them (also in login shells, which KubeRay uses).
#
# Builders: the legacy builder and BuildKit both build it (no `# syntax=` line, which would fetch a
# frontend from Docker Hub, and no `RUN --mount`, which the legacy builder rejects).
#
# Base (BASE_IMAGE): by default the official PyTorch CUDA runtime image of the torch version pinned
# in requirements.txt. torch 2.14.1 on PyPI is built for CUDA 13.0, and so is the torch inside
# pytorch/pytorch:2.14.1-cuda13.0-*, so installing requirements.lock finds torch==2.14.1 already
# satisfied and keeps it; the build stops below if the two ever disagree.
# CUDA 13 needs an NVIDIA driver >= 580 on the host. For an older driver, build with a CUDA
# variant that PyTorch publishes for this release, e.g. --build-arg CUDA_VERSION=12.8
# (tests/test_docker.py pins the default to the CUDA major of the PyPI build).
# Without a registry (air-gapped sites, our CI): docker/local-base.sh makes a Debian bookworm +
# Python base from a Debian mirror, and
#     docker build --build-arg BASE_IMAGE="$(docker/local-base.sh)" -t metaocl:latest .
# installs the PyPI torch (CUDA 13.0 build, runs on CPU too) into it. See docker/README.md.
ARG TORCH_VERSION=2.14.1
ARG CUDA_VERSION=13.0
ARG BASE_IMAGE=pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG TORCH_VERSION
ARG CUDA_VERSION
# The uid/gid the image runs as. 1000 matches most single-user hosts (bind mounts stay writable)
# and the securityContext in docker/kuberay/.
ARG APP_UID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Caches live under /cache and results under /runs: mount volumes there (docker/README.md).
ENV PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GIT_PYTHON_REFRESH=quiet \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    METAOCL_DATA=/cache/metaocl \
    METAOCL_SWEEPS=/app/sweeps

# wget: KubeRay's liveness/readiness probes call it. ca-certificates: downloads over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*

# The non-root user. Some bases already have a user with this uid (ubuntu:24.04 has `ubuntu`).
RUN set -eux; \
    old_user="$(getent passwd "${APP_UID}" | cut -d: -f1 || true)"; \
    if [ -n "${old_user}" ]; then userdel --remove "${old_user}" || true; fi; \
    if getent passwd "${APP_UID}" > /dev/null; then echo "uid ${APP_UID} is still taken" >&2; exit 1; fi; \
    old_group="$(getent group "${APP_UID}" | cut -d: -f1 || true)"; \
    if [ -n "${old_group}" ]; then groupdel "${old_group}"; fi; \
    groupadd --gid "${APP_UID}" metaocl; \
    useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /bin/bash metaocl

WORKDIR /app

# One venv for every base: it sees the base's own packages (the PyTorch image's torch), and keeps
# pip away from a Debian system Python (PEP 668).
RUN python3 -m venv --system-site-packages "${VIRTUAL_ENV}"

# Dependencies first: this layer is reused until the lock changes. requirements.lock pins every
# transitive package of requirements.txt (tests/test_docker.py keeps the two in agreement).
COPY requirements.txt requirements.lock ./
RUN python -m pip install --no-cache-dir -r requirements.lock

# The torch that ends up installed must be the pinned version, built for the base image's CUDA.
RUN python -c 'import sys, torch; \
    version, cuda = torch.__version__.split("+")[0], torch.version.cuda or "none"; \
    print(f"torch {torch.__version__}, built for CUDA {cuda}"); \
    ok = version == sys.argv[1] and cuda.split(".")[0] == sys.argv[2].split(".")[0]; \
    sys.exit(0 if ok else f"torch {version} for CUDA {cuda} does not match TORCH_VERSION={sys.argv[1]} CUDA_VERSION={sys.argv[2]}")' \
    "${TORCH_VERSION}" "${CUDA_VERSION}"

# The package, editable from /app; its sweeps are /app/sweeps (the metaocl/sweeps link points there,
# and METAOCL_SWEEPS above names it explicitly). tests/ and bench/ let a GPU host run
# `pytest -m gpu` (the GPU tests load bench/*.py) and the benchmarks here.
COPY pyproject.toml README.md ./
COPY metaocl ./metaocl
COPY sweeps ./sweeps
COPY tests ./tests
COPY bench ./bench
RUN python -m pip install --no-cache-dir --no-deps -e . \
    && metaocl --help > /dev/null

# Login shells (bash -l, as KubeRay starts Ray) may reset PATH; keep this Python's bin dir on it.
RUN echo "export PATH=\"$(dirname "$(command -v python)"):\${PATH}\"" > /etc/profile.d/metaocl-path.sh \
    && mkdir -p /runs /mlflow /cache /cache/huggingface /cache/torch /cache/metaocl \
    && chown -R "${APP_UID}:${APP_UID}" /runs /mlflow /cache /home/metaocl

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER ${APP_UID}:${APP_UID}
# The working directory holds the default MLflow store (sqlite:///mlflow.db) and Ray Tune's
# trial state (./metaocl-results): mount a volume here.
WORKDIR /runs

# `docker stop` sends SIGINT, which the sweep driver handles like Ctrl-C: unfinished trials and the
# sweep run end KILLED in MLflow and `metaocl sweep NAME --resume` continues (SIGTERM, Docker's
# default, would end the driver with no such bookkeeping). Give it time: `docker stop -t 60`.
STOPSIGNAL SIGINT
ENTRYPOINT ["metaocl"]
CMD ["--help"]
