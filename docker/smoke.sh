#!/usr/bin/env bash
# End-to-end check of the image on a machine with Docker, the NVIDIA container toolkit and a GPU:
#   1. build the image from this checkout,
#   2. check that the container sees the GPU with the pinned torch/CUDA, run `pytest -m gpu`, and
#      train one smoke trial on the GPU (`metaocl run NAME --smoke --set device=cuda`),
#   3. run the smoke variant of a sweep inside it (`metaocl sweep NAME --smoke`, the entrypoint
#      exactly as users call it),
#   4. check that MLflow holds the sweep's parent run and finished trial runs with metrics.
# With --compose it then does 3-4 again through docker/compose.yaml (MLflow server, Ray head,
# GPU worker, sweep service) and checks the runs on the MLflow server.
#
# Usage: docker/smoke.sh [--compose] [--no-build] [SWEEP]      (SWEEP defaults to batch_size)
# Env:   IMAGE (default metaocl:latest), SHM_SIZE (default 8g)
# Run it after changing the Dockerfile, requirements.txt, docker/ or the sweep/tracking code, and
# before publishing an image. It needs no data downloads beyond what the smoke variant uses.
set -euo pipefail

IMAGE="${IMAGE:-metaocl:latest}"
SHM_SIZE="${SHM_SIZE:-8g}"
SWEEP="batch_size"
WITH_COMPOSE=0
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --compose) WITH_COMPOSE=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "smoke.sh: unknown option $arg" >&2; exit 2 ;;
        *) SWEEP="$arg" ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXPERIMENT="metaocl/${SWEEP}-smoke"
VOLUME="metaocl-smoke-$$"

step() { printf '\n== %s\n' "$*"; }
fail() { echo "smoke.sh: FAILED: $*" >&2; exit 1; }

cleanup() {
    docker volume rm -f "$VOLUME" > /dev/null 2>&1 || true
    if [ "$WITH_COMPOSE" = 1 ]; then
        docker compose -f "$ROOT/docker/compose.yaml" -p metaocl-smoke down -v > /dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

command -v docker > /dev/null || fail "docker is not installed"
docker info > /dev/null 2>&1 || fail "cannot reach the Docker engine"

# Reads MLflow at $1 and checks experiment $2: a parent sweep run, >= 1 trial run, all trials
# FINISHED with metrics and pointing at a parent of this experiment.
CHECK_RUNS='
import sys
from mlflow.tracking import MlflowClient

uri, name = sys.argv[1], sys.argv[2]
client = MlflowClient(tracking_uri=uri)
experiment = client.get_experiment_by_name(name)
if experiment is None:
    sys.exit(f"no MLflow experiment {name!r} at {uri}")
runs = client.search_runs([experiment.experiment_id], max_results=10000)
parents = {r.info.run_id for r in runs if r.data.tags.get("metaocl.role") == "sweep"}
trials = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
problems = []
if not parents:
    problems.append("no parent run (tag metaocl.role=sweep)")
if not trials:
    problems.append("no trial runs (tag metaocl.role=trial)")
for r in trials:
    if r.info.status != "FINISHED":
        problems.append(f"trial {r.info.run_id} is {r.info.status}")
    if not r.data.metrics:
        problems.append(f"trial {r.info.run_id} logged no metrics")
    if r.data.tags.get("mlflow.parentRunId") not in parents:
        problems.append(f"trial {r.info.run_id} has no parent sweep run")
if problems:
    sys.exit("; ".join(problems))
print(f"{name}: {len(parents)} sweep run(s), {len(trials)} finished trial run(s) with metrics")
'

if [ "$BUILD" = 1 ]; then
    step "build $IMAGE"
    docker build -t "$IMAGE" "$ROOT"
fi

step "GPU inside the container"
docker run --rm --gpus all --entrypoint python "$IMAGE" -c '
import torch
assert torch.cuda.is_available(), "torch sees no GPU in the container"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
' || fail "no usable GPU in the container (driver too old for the image CUDA, or no NVIDIA toolkit?)"

step "pytest -m gpu inside the container"
set +e
docker run --rm --gpus all --shm-size="$SHM_SIZE" -w /app --entrypoint python "$IMAGE" \
    -m pytest -q -m gpu -p no:cacheprovider tests
status=$?
set -e
# 5 = no tests collected, which is fine while no test needs a GPU.
[ "$status" = 0 ] || [ "$status" = 5 ] || fail "GPU tests failed (pytest exit $status)"

step "one smoke trial on the GPU: metaocl run $SWEEP --smoke --set device=cuda"
docker run --rm --gpus all --shm-size="$SHM_SIZE" "$IMAGE" run "$SWEEP" --smoke --set device=cuda --no-track \
    || fail "a smoke trial does not train on the GPU"

step "the entrypoint lists the sweep"
docker run --rm "$IMAGE" list | grep -qw -- "$SWEEP" || fail "'metaocl list' does not show $SWEEP"

step "docker run --gpus all $IMAGE sweep $SWEEP --smoke"
docker volume create "$VOLUME" > /dev/null
docker run --rm --gpus all --shm-size="$SHM_SIZE" -v "$VOLUME:/runs" "$IMAGE" sweep "$SWEEP" --smoke

step "MLflow runs in the container's store (sqlite:///mlflow.db in /runs)"
docker run --rm -v "$VOLUME:/runs" --entrypoint python "$IMAGE" -c "$CHECK_RUNS" \
    sqlite:////runs/mlflow.db "$EXPERIMENT" || fail "MLflow runs missing or incomplete"

if [ "$WITH_COMPOSE" = 1 ]; then
    COMPOSE=(docker compose -f "$ROOT/docker/compose.yaml" -p metaocl-smoke)
    # Own project name, volumes and host ports: a stack you already run is left alone.
    export MLFLOW_PORT="${SMOKE_MLFLOW_PORT:-15000}" RAY_DASHBOARD_PORT="${SMOKE_RAY_DASHBOARD_PORT:-18265}"
    step "compose stack: mlflow, ray-head, ray-worker"
    # Reuse the image built above; compose would otherwise build it again under its own tag.
    [ "$IMAGE" = "metaocl:latest" ] || docker tag "$IMAGE" metaocl:latest
    "${COMPOSE[@]}" up -d --wait mlflow ray-head ray-worker

    step "compose: sweep service runs $SWEEP --smoke"
    METAOCL_SWEEP="$SWEEP" METAOCL_SWEEP_ARGS="--smoke" "${COMPOSE[@]}" run --rm sweep

    step "MLflow runs on the compose MLflow server"
    "${COMPOSE[@]}" exec -T mlflow python -c "$CHECK_RUNS" http://127.0.0.1:5000 "$EXPERIMENT" \
        || fail "MLflow runs missing or incomplete on the server"
fi

printf '\nsmoke.sh: OK (%s)\n' "$SWEEP"
