"""Static checks of the container and cluster files (no Docker engine or Kubernetes needed).

Our machines cannot build or run images, so these tests read the Dockerfile, docker/compose.yaml
and docker/kuberay/*.yaml and check what would otherwise fail only on a GPU host: the CUDA base
matches the pinned torch build, the image installs what it must and runs `metaocl` as a non-root
user, every COPY source is in the build context, and the compose services and Kubernetes objects
refer to each other by the same names, ports, image and environment. docker/smoke.sh does the
real build-and-run on a machine with Docker and a GPU.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker" / "compose.yaml"
KUBERAY = ROOT / "docker" / "kuberay"
SMOKE = ROOT / "docker" / "smoke.sh"
DOCKER_README = ROOT / "docker" / "README.md"
IMAGE = "metaocl:latest"
COMPOSE_IMAGE = "${METAOCL_IMAGE:-metaocl:latest}"  # compose's image: metaocl:latest unless METAOCL_IMAGE names another
# Compose services that run no metaocl code: the database (its own image, docker/postgres/) and the
# one-shot service that makes the secrets.
SUPPORT_SERVICES = {"postgres", "secrets"}

# CUDA version of the default Linux x86_64 wheel of each torch release on PyPI (what
# `pip install torch==X` installs, and what the pytorch/pytorch image of the same tag carries).
# Bumping torch in requirements.txt makes test_base_image_cuda_matches_pinned_torch fail until the
# new release is added here and the Dockerfile's CUDA_VERSION is checked against it.
TORCH_PYPI_CUDA = {
    "2.14.1": "13.0",
}


# ---------------------------------------------------------------- parsing helpers


def requirement_pins() -> dict[str, str]:
    """`name==version` lines of requirements.txt, keyed by the bare name (extras dropped)."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"\[.*\]", "", name).strip().lower()] = version.split(";", 1)[0].strip()  # marker dropped
    return pins


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    instructions, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comment lines may sit inside a continuation too
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


class Dockerfile:
    """The single-stage Dockerfile, with ARG defaults and WORKDIR resolved."""

    def __init__(self, path: Path):
        self.instructions = dockerfile_instructions(path.read_text())
        self.args: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.froms: list[str] = []
        self.copies: list[tuple[list[str], str]] = []  # (sources, absolute destination)
        self.runs: list[str] = []
        self.users: list[str] = []
        self.entrypoint = self.cmd = None
        workdir = "/"
        for keyword, args in self.instructions:
            if keyword == "ARG":
                name, _, default = args.partition("=")
                if default or name not in self.args:
                    self.args[name] = substitute(default, self.args)
            elif keyword == "FROM":
                self.froms.append(substitute(args.split()[0], self.args))
            elif keyword == "ENV":
                for item in shlex.split(args):
                    name, _, value = item.partition("=")
                    self.env[name] = substitute(value, {**self.args, **self.env})
            elif keyword == "WORKDIR":
                workdir = str(Path(workdir) / substitute(args, self.args))
            elif keyword == "COPY":
                parts = [p for p in shlex.split(args) if not p.startswith("--")]
                assert "--from" not in args, "single-stage image expected"
                dest = parts[-1]
                dest = dest if dest.startswith("/") else str(Path(workdir) / dest)
                self.copies.append((parts[:-1], dest))
            elif keyword == "RUN":
                self.runs.append(args)
            elif keyword == "USER":
                self.users.append(substitute(args, {**self.args, **self.env}))
            elif keyword == "ENTRYPOINT":
                self.entrypoint = json.loads(args)
            elif keyword == "CMD":
                self.cmd = json.loads(args)
        self.workdir = workdir


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `path` (a file or folder relative to the context root), or a
    folder above it. Handles the pattern forms we use: plain paths, `*`, `**/`, `!` exceptions."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern[3:])
        hit = any(
            fnmatch.fnmatchcase(prefix, candidate) or fnmatch.fnmatchcase(prefix, candidate.replace("**/", "*/"))
            for prefix in prefixes
            for candidate in candidates
        )
        if hit:
            result = not negate
    return result


def ray_start_flags(command: list[str]) -> dict[str, str]:
    """`--key=value` flags of a `ray start ...` command (flags without a value map to "")."""
    flags = {}
    for token in command:
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            flags[key] = value
    return flags


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kube_objects() -> list[dict]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_yaml_documents(path)]


def kube_object(kind: str, name: str | None = None) -> dict:
    found = [o for o in kube_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in docker/kuberay/, found {len(found)}"
    return found[0]


def ray_pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def container_env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---------------------------------------------------------------- parser self-checks


def test_dockerfile_parser_joins_continuations_and_resolves_args():
    text = "# syntax=docker/dockerfile:1\nARG V=1.0\nFROM base:${V}-x\n# note\nRUN a \\\n  # inner\n  b\n"
    assert dockerfile_instructions(text) == [("ARG", "V=1.0"), ("FROM", "base:${V}-x"), ("RUN", "a b")]
    assert substitute("base:${V}-$W", {"V": "1.0", "W": "y"}) == "base:1.0-y"
    assert substitute("${UNSET}", {}) == "${UNSET}"


def test_dockerignore_matcher():
    patterns = [".git", "**/__pycache__", "data", "*.egg-info", "docker"]
    assert ignored(".git/config", patterns)
    assert ignored("metaocl/data/__pycache__/x.pyc", patterns)
    assert ignored("data/cvdb.csv", patterns)
    assert not ignored("metaocl/data/qa.py", patterns)  # only the top-level data/ is dropped
    assert ignored("metaocl.egg-info", patterns)
    assert not ignored("metaocl", patterns)
    assert not ignored("dockerfile_notes", patterns)


# ---------------------------------------------------------------- the image


def test_base_image_cuda_matches_pinned_torch(dockerfile):
    pins = requirement_pins()
    torch_pin = pins["torch"]
    assert torch_pin in TORCH_PYPI_CUDA, (
        f"requirements.txt pins torch=={torch_pin}: add its PyPI CUDA version to TORCH_PYPI_CUDA "
        "in tests/test_docker.py and check the Dockerfile's base image against it"
    )
    (base,) = dockerfile.froms
    match = (
        re.fullmatch(r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>\d+\.\d+)-cudnn\d+-(runtime|devel)", base)
        or re.fullmatch(r"rayproject/ray:[\d.]+-py\d+-cu(?P<cuda>\d+)", base)
        or re.fullmatch(r"nvidia/cuda:(?P<cuda>\d+\.\d+)[.\d]*-.*", base)
    )
    assert match, f"base image {base!r} is not a recognised CUDA image"
    cuda = match["cuda"]
    base_major = cuda.split(".")[0] if "." in cuda else cuda[:-1]  # rayproject: cu130 -> 13
    assert base_major == TORCH_PYPI_CUDA[torch_pin].split(".")[0], (
        f"base image {base} has CUDA {cuda}; torch=={torch_pin} from PyPI is built for "
        f"CUDA {TORCH_PYPI_CUDA[torch_pin]}"
    )
    if match.re.pattern.startswith("pytorch/"):
        assert match["torch"] == torch_pin, f"base image carries torch {match['torch']}, pinned {torch_pin}"
    # The build-time guard must compare against the same versions the base was chosen from.
    assert dockerfile.args["TORCH_VERSION"] == torch_pin
    assert any('"${TORCH_VERSION}" "${CUDA_VERSION}"' in run and "torch.version.cuda" in run for run in dockerfile.runs)


def test_dockerfile_builds_with_the_legacy_builder_and_buildkit(dockerfile):
    text = DOCKERFILE.read_text()
    # A `# syntax=` line makes BuildKit fetch its frontend from Docker Hub (fails without a
    # registry); the legacy builder rejects `RUN --mount`.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "no `# syntax=` line"
    assert not any(run.startswith("--mount") or " --mount=" in run for run in dockerfile.runs), "no RUN --mount"
    # One FROM, chosen by BASE_IMAGE: the PyTorch image by default, docker/local-base.sh's without a registry.
    keyword_args = [args for keyword, args in dockerfile.instructions if keyword == "FROM"]
    assert keyword_args == ["${BASE_IMAGE}"]
    assert dockerfile.args["BASE_IMAGE"] == dockerfile.froms[0]
    # `docker stop` must reach the driver as Ctrl-C (KeyboardInterrupt: KILLED runs, resumable).
    assert ("STOPSIGNAL", "SIGINT") in dockerfile.instructions


def test_pinned_torch_mapping_agrees_with_installed_torch():
    import torch  # installed by requirements.txt: a broken install fails here, it does not skip

    pin = requirement_pins()["torch"]
    installed, _, local = torch.__version__.partition("+")
    if installed != pin or not torch.version.cuda:
        pytest.skip(f"installed torch {torch.__version__} is not the pinned CUDA build {pin}")
    assert torch.version.cuda.split(".")[0] == TORCH_PYPI_CUDA[pin].split(".")[0]
    assert local in ("", f"cu{TORCH_PYPI_CUDA[pin].replace('.', '')}")


def test_image_installs_requirements_then_the_package(dockerfile):
    copied = {source: dest for sources, dest in dockerfile.copies for source in sources}
    assert "requirements.lock" in copied and "pyproject.toml" in copied and "metaocl" in copied
    pip_runs = [run for run in dockerfile.runs if "pip install" in run]
    requirements_run = [i for i, run in enumerate(pip_runs) if "-r requirements.lock" in run]
    package_run = [i for i, run in enumerate(pip_runs) if re.search(r"pip install\b.*(-e )?\.(\s|$)", run)]
    assert requirements_run and package_run, pip_runs
    assert requirements_run[0] < package_run[0], "install pinned requirements before the package"
    # --no-deps: the package install must never move a pin of requirements.lock.
    assert "--no-deps" in pip_runs[package_run[0]]
    # sweep files: found through METAOCL_SWEEPS, which must be where sweeps/ was copied to.
    assert copied.get("sweeps") == dockerfile.env["METAOCL_SWEEPS"]


def test_entrypoint_is_the_console_script(dockerfile):
    assert dockerfile.entrypoint == ["metaocl"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^metaocl\s*=\s*"metaocl\.cli:console"', pyproject, re.M)


def test_runs_as_a_numeric_non_root_user(dockerfile):
    assert dockerfile.users, "the image must switch to a non-root USER"
    user = dockerfile.users[-1].split(":")[0]
    assert user.isdigit() and user != "0", f"USER {user!r}: numeric and non-zero (Kubernetes runAsNonRoot)"
    assert any(f"--uid \"${{APP_UID}}\"" in run and "useradd" in run for run in dockerfile.runs)


def test_every_copy_source_exists_and_is_in_the_context(dockerfile):
    patterns = dockerignore_patterns()
    for sources, _ in dockerfile.copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository, `docker build` would fail"
            assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out(dockerfile):
    patterns = dockerignore_patterns()
    for path in [".git/HEAD", "mlflow.db", "mlruns/0/meta.yaml", "ray_results/x", "metaocl/__pycache__/a.pyc", ".env"]:
        assert ignored(path, patterns), f"{path} would be sent to the Docker build context"


def test_volume_mount_points_exist_in_the_image_and_belong_to_the_user(dockerfile, compose):
    prepare = next(run for run in dockerfile.runs if "mkdir -p" in run)
    made = set(prepare.split("mkdir -p", 1)[1].split("&&")[0].split())
    targets = {
        mount.split(":")[1]
        for name, service in compose["services"].items()
        for mount in service.get("volumes", [])
        if name not in SUPPORT_SERVICES and not mount.startswith("secrets:")  # made (root) by the secrets service
    }
    missing = {t for t in targets if not any(d == t or d.startswith(t + "/") for d in made)}
    assert not missing, f"compose mounts {missing}, which the image does not create for its user"
    assert dockerfile.workdir in made
    for cache in ("HF_HOME", "TORCH_HOME", "METAOCL_DATA"):
        assert any(dockerfile.env[cache].startswith(d + "/") or dockerfile.env[cache] == d for d in made)


# ---------------------------------------------------------------- docker/compose.yaml


def test_compose_services_use_the_one_image(compose):
    for name, service in compose["services"].items():
        if name == "postgres":
            assert service["build"]["context"] == "postgres" and (COMPOSE.parent / "postgres" / "Dockerfile").is_file()
            continue
        assert service["image"] == COMPOSE_IMAGE, name
        assert service["build"]["context"] == ".." and service["build"]["dockerfile"] == "Dockerfile", name
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE


def _argv(service: dict) -> list[str]:
    """What a service runs; a `bash -c SCRIPT NAME` entrypoint (a wrapper that ends in `exec NAME "$@"`)
    counts as NAME."""
    entrypoint = service.get("entrypoint", [])
    if entrypoint[:2] == ["bash", "-c"] and len(entrypoint) == 4 and f'exec {entrypoint[3]} "$$@"' in entrypoint[2]:
        entrypoint = entrypoint[3:]
    return entrypoint + service.get("command", [])


def _service_with_command(compose: dict, *words: str) -> tuple[str, dict]:
    found = [
        (name, s)
        for name, s in compose["services"].items()
        if _argv(s)[: len(words)] == list(words)
    ]
    assert len(found) == 1, f"expected one service running {' '.join(words)}"
    return found[0]


def test_compose_addresses_name_the_services_and_ports(compose):
    head_name, head = _service_with_command(compose, "ray", "start", "--head")
    mlflow_name, mlflow = _service_with_command(compose, "mlflow", "server")
    head_port = ray_start_flags(head["command"])["port"]
    mlflow_port = ray_start_flags(mlflow["command"])["port"]

    envs = {name: s.get("environment", {}) for name, s in compose["services"].items()}
    ray_addresses = {e["RAY_ADDRESS"] for e in envs.values() if "RAY_ADDRESS" in e}
    tracking_uris = {e["MLFLOW_TRACKING_URI"] for e in envs.values() if "MLFLOW_TRACKING_URI" in e}
    assert ray_addresses == {f"{head_name}:{head_port}"}
    assert tracking_uris == {f"http://{mlflow_name}:{mlflow_port}"}

    # every Ray/metaocl container gets both
    for name, service in compose["services"].items():
        if service.get("entrypoint") == ["ray"] or name == "sweep":
            assert {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"} <= set(envs[name]), name

    worker_name, worker = _service_with_command(compose, "ray", "start", f"--address={head_name}:{head_port}")
    assert worker_name != head_name

    # MLflow accepts the Host header the other containers send.
    allowed = envs[mlflow_name]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"{mlflow_name}:{mlflow_port}" in allowed

    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_compose_publishes_only_ui_ports_on_loopback(compose):
    head_name, head = _service_with_command(compose, "ray", "start", "--head")
    mlflow_name, mlflow = _service_with_command(compose, "mlflow", "server")
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            match = re.fullmatch(r"(?P<ip>[\d.]+):(?P<host>\$\{\w+:-\d+\}|\d+):(?P<container>\d+)", port)
            assert match, f"{name}: publish {port!r} as HOST_IP:HOST_PORT:CONTAINER_PORT"
            assert match["ip"] == "127.0.0.1", f"{name} publishes {port} beyond the host's loopback"
            published[name] = match["container"]
    assert published == {
        mlflow_name: ray_start_flags(mlflow["command"])["port"],
        head_name: ray_start_flags(head["command"])["dashboard-port"],
    }
    assert ray_start_flags(head["command"])["dashboard-host"] == "0.0.0.0"  # reachable by the publish


def test_compose_gpu_reservation_and_shared_memory(compose):
    head_name, _ = _service_with_command(compose, "ray", "start", "--head")
    gpu_services = []
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
            gpu_services.append(name)
        if "ray" in service.get("entrypoint", []) or name == "sweep":
            assert "shm_size" in service, f"{name}: Ray's object store needs shm_size"
    assert gpu_services and head_name not in gpu_services
    for name in gpu_services:
        assert ray_start_flags(compose["services"][name]["command"]).get("address"), name


def test_compose_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert not source.startswith((".", "/")), f"{name}: use named volumes, not host paths"
            assert source in declared, f"{name} mounts undeclared volume {source}"


def test_compose_sweep_script_is_valid_bash(compose, tmp_path):
    sweep = compose["services"]["sweep"]
    assert sweep["entrypoint"] == ["bash", "-c"] and sweep.get("profiles") == ["sweep"]
    (script,) = sweep["command"]
    assert "metaocl sweep" in script and '--address="$${RAY_ADDRESS}"' in script
    # compose turns $$ into a literal $ for the shell
    path = tmp_path / "sweep.sh"
    path.write_text(script.replace("$$", "$"))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not re.search(r"(?<!\$)\$\{?(RAY_ADDRESS|METAOCL_SWEEP)", script), "unescaped $ in the sweep script"


def compose_with_cpu_override() -> dict:
    """compose.yaml merged with compose.cpu.yaml the way Compose merges an override: services and
    their keys are replaced (command), profiles are added; nothing is removed."""
    base = yaml.safe_load(COMPOSE.read_text())
    override = yaml.safe_load((COMPOSE.parent / "compose.cpu.yaml").read_text())
    for name, service in override["services"].items():
        merged = base["services"].setdefault(name, {})
        for key, value in service.items():
            merged[key] = sorted(set(merged.get(key, [])) | set(value)) if key == "profiles" else value
    return base


def test_compose_cpu_override_starts_no_gpu_service(compose):
    merged = compose_with_cpu_override()
    default_services = {n: s for n, s in merged["services"].items() if not s.get("profiles")}
    for name, service in default_services.items():
        assert not service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"), (
            f"{name} asks for a GPU under the CPU override")
    head_name, head = _service_with_command(compose, "ray", "start", "--head")
    workers = [n for n, s in default_services.items()
               if s.get("entrypoint") == ["ray"] and ray_start_flags(s["command"]).get("address")]
    assert workers == ["ray-cpu-worker"], workers
    worker = merged["services"]["ray-cpu-worker"]
    assert worker["image"] == COMPOSE_IMAGE and worker["environment"] == compose["services"]["ray-worker"]["environment"]
    assert ray_start_flags(worker["command"])["address"] == compose["services"]["ray-worker"]["environment"]["RAY_ADDRESS"]
    assert worker["volumes"] == compose["services"]["ray-worker"]["volumes"]
    # the head keeps its role (port, dashboard) and takes trials too, with as many CPUs as a worker
    head_flags, merged_flags = ray_start_flags(head["command"]), ray_start_flags(merged["services"][head_name]["command"])
    assert {k: v for k, v in merged_flags.items() if k != "num-cpus"} == head_flags
    assert merged_flags["num-cpus"] == ray_start_flags(worker["command"])["num-cpus"]
    # the sweep service must not depend on the GPU worker, which the override leaves off
    for name, service in default_services.items():
        assert not set(service.get("depends_on", {})) & {"ray-worker"}, name
    assert not set(merged["services"]["sweep"].get("depends_on", {})) & {"ray-worker"}


def test_compose_files_read_by_docker_compose_1_29(compose):
    """Keys docker-compose 1.29 (Debian 12's) rejects: a top-level `name`."""
    for path in [COMPOSE, COMPOSE.parent / "compose.cpu.yaml"]:
        top = set(yaml.safe_load(path.read_text()))
        assert top <= {"services", "volumes", "networks", "configs", "secrets"} | {k for k in top if k.startswith("x-")}, path
    for name, service in compose["services"].items():
        assert service.get("init") is True, f"{name}: init: true, so that the service stops promptly"
    exe = shutil.which("docker-compose")
    if exe:
        result = subprocess.run([exe, "-p", "metaocl", "-f", str(COMPOSE), "-f", str(COMPOSE.parent / "compose.cpu.yaml"),
                                 "config", "-q"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- docker/kuberay


def test_kuberay_cluster_and_job_share_one_spec():
    cluster = kube_object("RayCluster")
    job = kube_object("RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's cluster drifted from raycluster.yaml"
    assert cluster["spec"]["rayVersion"] == requirement_pins()["ray"]
    assert re.fullmatch(r"cd /runs && metaocl sweep [\w-]+", job["spec"]["entrypoint"])


def test_kuberay_images_gpus_and_users(dockerfile):
    uid = int(dockerfile.args["APP_UID"])
    cluster = kube_object("RayCluster")
    pods = ray_pod_specs(cluster["spec"]) + [kube_object("Deployment")["spec"]["template"]["spec"]]
    for pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
        for container in pod["containers"]:
            assert container["image"] == IMAGE
    head, *workers = ray_pod_specs(cluster["spec"])
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"].get("limits", {})
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for worker in workers:
        limits = worker["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    for pod in ray_pod_specs(cluster["spec"]):
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert shm and mounts[shm[0]["name"]] == "/dev/shm"


def test_kuberay_mlflow_is_reached_by_its_service():
    service = kube_object("Service", "metaocl-mlflow")
    deployment = kube_object("Deployment", "metaocl-mlflow")
    (port,) = service["spec"]["ports"]
    uri = f"http://{service['metadata']['name']}:{port['port']}"

    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    (mlflow,) = pod["spec"]["containers"]
    assert mlflow["command"] == ["mlflow"] and mlflow["args"][0] == "server"
    server_port = ray_start_flags(mlflow["args"])["port"]
    container_ports = {p["name"]: p["containerPort"] for p in mlflow["ports"]}
    assert container_ports[port["targetPort"]] == int(server_port)
    allowed = container_env(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"{service['metadata']['name']}:{port['port']}" in allowed

    for pod_spec in ray_pod_specs(kube_object("RayCluster")["spec"]):
        env = container_env(pod_spec["containers"][0])
        assert env["MLFLOW_TRACKING_URI"] == uri
        # KubeRay and Ray set RAY_ADDRESS; a hard-coded one could only disagree with them.
        assert "RAY_ADDRESS" not in env


def test_kuberay_volume_claims_exist():
    claims = {o["metadata"]["name"]: o for o in kube_objects() if o["kind"] == "PersistentVolumeClaim"}
    pods = ray_pod_specs(kube_object("RayCluster")["spec"]) + [kube_object("Deployment")["spec"]["template"]["spec"]]
    for pod in pods:
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for pod in ray_pod_specs(kube_object("RayCluster")["spec"]):
        runs = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims[runs[0]["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"] == ["ReadWriteMany"]


# ---------------------------------------------------------------- across files


def test_image_name_and_sweep_name_agree_across_files(compose):
    smoke = SMOKE.read_text()
    assert re.search(r'^IMAGE="\$\{IMAGE:-(.+?)\}"', smoke, re.M)[1] == IMAGE
    readme = DOCKER_README.read_text()
    built = set(re.findall(r"docker build -t (\S+)", readme))
    assert built == {IMAGE}, built

    sweep_default = re.search(r"METAOCL_SWEEP:-(\w+)", yaml.safe_dump(compose))[1]
    job_sweep = kube_object("RayJob")["spec"]["entrypoint"].split()[-1]
    smoke_sweep = re.search(r'^SWEEP="(\w+)"', smoke, re.M)[1]
    assert sweep_default == job_sweep == smoke_sweep
    sweeps = {p.stem for p in (ROOT / "sweeps").glob("*.yaml")}
    if sweeps:
        assert sweep_default in sweeps, f"sweeps/{sweep_default}.yaml does not exist"


def test_readme_documents_volumes_shm_and_smoke(compose):
    readme = DOCKER_README.read_text()
    for needle in ["--shm-size", "smoke.sh", "/runs", "/cache", "--gpus all", "metaocl sweep"]:
        assert needle in readme, f"docker/README.md does not mention {needle}"
    for volume in compose["volumes"]:
        assert volume in readme, f"docker/README.md does not name the compose volume {volume}"


def test_smoke_script_is_valid_bash():
    assert shutil.which("bash")
    result = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert SMOKE.stat().st_mode & 0o111, "docker/smoke.sh must be executable"
    text = SMOKE.read_text()
    assert "set -euo pipefail" in text
    # it checks MLflow the way the architecture lays runs out
    for needle in ['"metaocl.role") == "sweep"', '"metaocl.role") == "trial"', "-smoke", "mlflow.parentRunId"]:
        assert needle in text



# ---------------------------------------------------------------- requirements.lock


LOCK = ROOT / "requirements.lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries() -> list[dict]:
    """requirements.lock as uv writes it: `name==version [; marker]` lines, each followed by
    `# via` comment lines naming what pulled it in (`-r requirements.txt` for a top-level pin)."""
    entries = []
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if entries:
                words = line.lstrip("#").strip()
                words = words[len("via"):].strip() if words.startswith("via") else words
                if words:
                    entries[-1]["via"].add(words)
            continue
        spec, _, marker = line.partition(";")
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[\w,-]+\])?==([\w.+!-]+)", spec.strip())
        assert match, f"requirements.lock: {line!r} is not an exact `name==version` pin"
        entries.append({"name": canonical(match[1]), "version": match[3], "marker": marker.strip(), "via": set()})
    return entries


def test_lock_header_names_the_command_that_made_it():
    header = LOCK.read_text().splitlines()[:3]
    command = next((line.lstrip("# ").strip() for line in header if "pip compile" in line), "")
    # --no-config: no uv.toml / UV_* settings of the machine; uv never reads pip.conf, so this
    # machine's pip constraints (/etc/xdg/pip/constraints.txt) cannot leak into the lock.
    for needle in ["uv pip compile requirements.txt", "--no-config", "--universal", "-o requirements.lock"]:
        assert needle in command, f"requirements.lock's header command lacks {needle!r}: {command!r}"


def test_lock_agrees_with_requirements_txt():
    pins = {canonical(name): version for name, version in requirement_pins().items()}
    entries = lock_entries()
    locked: dict[str, set[str]] = {}
    for entry in entries:
        locked.setdefault(entry["name"], set()).add(entry["version"])
    for name, version in pins.items():
        assert name in locked, f"{name}=={version} is in requirements.txt but not in requirements.lock: regenerate the lock"
        assert locked[name] == {version}, (
            f"requirements.txt pins {name}=={version}, requirements.lock has {sorted(locked[name])}: regenerate the lock")
    top_level = {e["name"] for e in entries if "-r requirements.txt" in e["via"]}
    assert top_level == set(pins), (
        f"the lock's top-level packages differ from requirements.txt: "
        f"only in the lock {sorted(top_level - set(pins))}, only in requirements.txt {sorted(set(pins) - top_level)}")


def test_lock_is_closed_and_unique():
    entries = lock_entries()
    names = {e["name"] for e in entries}
    for entry in entries:
        for via in entry["via"]:
            if not via.startswith("-r"):
                assert canonical(via) in names, f"{entry['name']} is pulled in by {via}, which the lock does not pin"
    # one version per package, unless markers split it (e.g. by Python version)
    seen: dict[str, list[str]] = {}
    for entry in entries:
        seen.setdefault(entry["name"], []).append(entry["marker"])
    for name, markers in seen.items():
        assert len(markers) == 1 or all(markers), f"{name} is pinned twice without markers"


def test_image_and_ci_install_from_the_lock(dockerfile):
    installs = [run for run in dockerfile.runs if "pip install" in run and "-r " in run]
    assert installs and all("-r requirements.lock" in run for run in installs), installs
    copied = {source for sources, _ in dockerfile.copies for source in sources}
    assert "requirements.lock" in copied
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install (-q )?-r requirements.lock", ci)
