"""Chaos: a sweep of many short trials on a local 3-node Ray cluster under random faults loses nothing.

    nice -n 5 python bench/chaos.py                           # 100 trials under chaos, then the same calm
    python bench/chaos.py --trials 6 --epochs 3,2 --trial-cpus 1 --raylet-kills 2 --kill-every 5,10 --no-calm
                                                              # a small version (tests/test_chaos.py)

Set-up, all on this machine: a Ray head on 127.0.0.2 (no CPUs: it hosts the driver) and two worker
nodes on 127.0.0.3 and 127.0.0.4 (``--cpus`` each), each started with ``ray start --block`` in a
session of its own; an MLflow server (``mlflow server``, SQLite behind it) on 127.0.0.1; trial storage
in one folder every node sees. The sweep is ``metaocl sweep`` itself, run as a user runs it
(``--address``, ``--tracking-uri``, ``--storage``), over a tiny set-inclusion trial evaluated after
every epoch (and checkpointed there), ``--trial-cpus`` (half a CPU) each, with
``METAOCL_REUSE_ACTORS=1`` (a Ray worker runs trial after trial: the import of torch, ~27 s of a
30 s trial on a loaded 2-core machine, is paid once per worker process, not once per trial).

The chaos loop runs beside the driver and stops by itself (bounded in count and in time):

- every ``--kill-every`` seconds (drawn uniformly in the range) a random worker node's raylet gets
  SIGKILL (the node dies with it, as a preempted machine does); the node is started again at once;
- once a third of the trials has finished, the driver gets SIGKILL and ``metaocl sweep --resume``
  continues the sweep;
- once half the trials have finished, the MLflow server is stopped and started again (same port).

Afterwards it reads MLflow and the trial storage back and prints (and, with ``--json``, writes):
every trial FINISHED exactly once in MLflow, no metric step missing or duplicated in any trial run,
retries per trial, the extra work (evaluations a retry reported again, attempts cut short), the
driver's output (one line per retry, no tracebacks) and the wall time against the same sweep
without chaos (``--no-calm`` skips it), measured side by side in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from _cluster import free_port, ray_env, stop, tiny_sweep_file, wait_for, wait_ray_nodes  # noqa: E402 (bench/_cluster.py, shared with tests/)
from _cluster import start as start_process  # noqa: E402

HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
MEASURE = "acc/d1consis"  # a metric every report carries: its steps are checked


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# Ray's own patience, raised for a loaded machine (Ray system config, read from RAY_<name> by every Ray
# process): the head declares a node dead after health_check_failure_threshold missed checks of
# health_check_timeout_ms each (here ~2 min, not ~15 s: only the kills below should kill a node); a
# worker process has worker_register_timeout_seconds to start; a raylet waits
# gcs_rpc_server_reconnect_timeout_s for the head. (Ray's 30 s for a new node to register is fixed
# in `ray start`; a node that misses it is started again, see Cluster._start_nodes.)
RAY_PATIENCE = {"RAY_health_check_failure_threshold": "20", "RAY_health_check_timeout_ms": "6000",
                "RAY_worker_register_timeout_seconds": "300", "RAY_gcs_rpc_server_reconnect_timeout_s": "300"}


def env(**extra: str) -> dict:
    return ray_env(MLFLOW_ENABLE_TELEMETRY="false", HF_HUB_OFFLINE="1", **RAY_PATIENCE, **extra)


def start(cmd: list[str], logfile: Path, cwd: Path | None = None, **extra: str) -> subprocess.Popen:
    """``cmd`` in a session of its own (stopped by process group), its output appended to ``logfile``."""
    return start_process(cmd, logfile, env=env(**extra), cwd=cwd, append=True)


# --------------------------------------------------------------------------------------------
# The cluster, the MLflow server
# --------------------------------------------------------------------------------------------
class Cluster:
    """A head and worker nodes on loopback, each a ``ray start --block`` in a session of its own."""

    def __init__(self, base: Path, cpus: int):
        self.base, self.cpus = base, cpus
        self.temp_dir = tempfile.mkdtemp(prefix="mocl-chaos-", dir="/tmp")  # short: Unix socket names
        self.port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.started: list[subprocess.Popen] = []  # every `ray start` ever launched (stopped at the end)
        self.restarts = Counter()

    def _common(self, cpus: int) -> list[str]:
        return [f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={self.temp_dir}", "--block"]

    def up(self) -> None:
        self.nodes.update(self._start_nodes({HEAD_IP: ["ray", "start", "--head", f"--node-ip-address={HEAD_IP}",
                                                       f"--port={self.port}", "--include-dashboard=false",
                                                       *self._common(0)]}))
        self.nodes.update(self._start_nodes({ip: self._worker_cmd(ip) for ip in WORKER_IPS}))  # side by side
        wait_ray_nodes(self.address, 1 + len(WORKER_IPS), HEAD_IP, timeout=300, env=env())

    def _worker_cmd(self, ip: str) -> list[str]:
        return ["ray", "start", f"--address={self.address}", f"--node-ip-address={ip}", *self._common(self.cpus)]

    def start_worker(self, ip: str) -> None:
        self.nodes.update(self._start_nodes({ip: self._worker_cmd(ip)}))

    def _start_nodes(self, cmds: dict[str, list[str]], tries: int = 8) -> dict[str, subprocess.Popen]:
        """``ray start --block`` of each node at once, until each says it started: on a loaded machine
        a node can miss Ray's fixed 30 s start-up window and exit; then it is started again."""
        up: dict[str, subprocess.Popen] = {}
        for attempt in range(1, tries + 1):
            launched = {}
            for ip, cmd in cmds.items():
                if ip in up:
                    continue
                logfile = self.base / f"{'head' if ip == HEAD_IP else 'worker-' + ip}.log"
                offset = logfile.stat().st_size if logfile.exists() else 0
                proc = start(cmd, logfile)
                self.started.append(proc)
                launched[ip] = (proc, logfile, offset)

            def said_started(logfile: Path, offset: int) -> bool:
                with logfile.open("rb") as f:
                    f.seek(offset)
                    return b"Ray runtime started" in f.read()
            for ip, (proc, logfile, offset) in launched.items():
                wait_for(lambda: proc.poll() is not None or said_started(logfile, offset), f"the Ray node {ip}",
                         timeout=600, every=0.5)
                if proc.poll() is None:
                    up[ip] = proc
                else:
                    stop(proc)
                    log(f"the Ray node {ip} did not start (attempt {attempt}, see {logfile}); starting it again")
            if len(up) == len(cmds):
                return up
        raise RuntimeError(f"Ray nodes {sorted(set(cmds) - set(up))} did not start in {tries} attempts "
                           f"(see {self.base})")

    def raylet(self, ip: str):
        import psutil

        proc = self.nodes.get(ip)
        if proc is None or proc.poll() is not None:
            return None
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return None
        return next((p for p in kids if _name(p) == "raylet"), None)

    def kill_raylet(self, ip: str) -> None:
        """SIGKILL of the node's raylet (the node dies with it), then the node is started again."""
        raylet = self.raylet(ip)
        if raylet is not None:
            raylet.send_signal(signal.SIGKILL)
        stop(self.nodes[ip], first=signal.SIGKILL)  # whatever of the node outlived its raylet
        self.restarts[ip] += 1
        try:
            self.start_worker(ip)
        except (RuntimeError, AssertionError) as e:  # the sweep goes on with the other node; the figures count it
            self.restarts["failed"] += 1
            log(f"{e}: the sweep goes on without it")

    def down(self) -> None:
        for proc in reversed(self.started):  # a leader that exited may leave its session's processes
            stop(proc)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _name(p) -> str:
    try:
        return p.name()
    except Exception:
        return ""


class MlflowServer:
    def __init__(self, base: Path):
        self.base = base
        self.port = free_port("127.0.0.1")
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def up(self) -> None:
        self.proc = start(["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                           "--backend-store-uri", f"sqlite:///{self.base / 'mlflow.db'}",
                           "--artifacts-destination", str(self.base / "mlartifacts")], self.base / "mlflow.log",
                          MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner processes: a store only
        wait_for(self.healthy, "the MLflow server", timeout=300, every=1)

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(self.uri + "/health", timeout=2).status == 200
        except OSError:
            return False

    def restart(self, pause: float = 3.0) -> None:
        stop(self.proc)
        time.sleep(pause)  # a real outage: the driver's writes meet a closed port for a while
        self.up()

    def down(self) -> None:
        if self.proc is not None:
            stop(self.proc)


# --------------------------------------------------------------------------------------------
# The sweep, the chaos loop
# --------------------------------------------------------------------------------------------
def sweep_file(folder: Path, name: str, trials: int, epochs: tuple[int, int], max_failures: int,
               trial_cpus: float) -> Path:
    """``trials`` seeds of a tiny set-inclusion trial (seconds of training each), evaluated and
    checkpointed every epoch, ``trial_cpus`` CPUs each (a fraction: several trials share a CPU)."""
    return tiny_sweep_file(folder, name, seeds=trials, epochs=epochs, resources=f"{{cpu: {trial_cpus}, gpu: 0}}",
                           max_failures=max_failures, description=f"chaos bench: tiny set inclusion, {trials} trials")


def finished_markers(storage: Path) -> set[str]:
    return {p.name for p in storage.glob("*/metaocl/finished/*")}


def attempts(storage: Path) -> list[dict]:
    out = []
    for p in sorted(storage.glob("*/metaocl/attempts/*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # being written
            pass
    return out


def busy_nodes(storage: Path) -> list[str]:
    """Worker nodes running a trial now: an attempt record (written as the trial starts) whose
    process is alive, of a trial not finished."""
    import psutil

    done = finished_markers(storage)
    return sorted({a["node_ip"] for a in attempts(storage)
                   if a["trial_id"] not in done and a["node_ip"] in WORKER_IPS and psutil.pid_exists(a["pid"])})


def past_startup(log: Path) -> bool:
    """The driver writing ``log`` is past its start-up checks (MLflow reachable): it printed its plan."""
    try:
        return "\nplan on " in log.read_text(errors="replace")
    except OSError:
        return False


def run_sweep(base: Path, path: Path, cluster: Cluster, mlflow: MlflowServer, storage: Path, *, chaos: bool,
              raylet_kills: int, kill_every: tuple[float, float], kill_driver: bool, restart_mlflow: bool,
              chaos_s: float, timeout_s: float, seed: int, reuse: bool) -> dict:
    """Run the sweep to its end (with the chaos loop beside it when ``chaos``); returns what was done."""
    rng = random.Random(seed)
    name = path.stem
    n_trials = int(path.read_text().split("seeds: ")[1].split()[0])
    args = [sys.executable, "-m", "metaocl.cli", "sweep", str(path), "--address", cluster.address,
            "--tracking-uri", mlflow.uri, "--storage", str(storage)]
    logs: list[Path] = []

    def launch(extra: list[str]) -> subprocess.Popen:
        logs.append(base / f"driver-{name}-{len(logs) + 1}.log")
        return start(args + extra, logs[-1], cwd=base, **({"METAOCL_REUSE_ACTORS": "1"} if reuse else {}))

    events: list[str] = []
    t0 = time.monotonic()
    driver = launch([])
    next_kill = t0 + rng.uniform(*kill_every)
    kills = driver_kills = mlflow_restarts = 0
    try:
        while True:
            code = driver.poll()
            if code is not None:
                break
            now = time.monotonic()
            if now - t0 > timeout_s:  # stopped: the figures say how far it got
                log(f"the sweep did not end within {timeout_s:.0f} s (see {logs[-1]}); stopping it")
                stop(driver, first=signal.SIGINT)
                code = None
                break
            in_chaos = chaos and now - t0 < chaos_s
            done = len(finished_markers(storage))
            if in_chaos and kill_driver and not driver_kills and done >= max(1, n_trials // 3):
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=60)
                driver_kills += 1
                events.append(f"{now - t0:6.0f} s  driver SIGKILL ({done}/{n_trials} finished), then --resume")
                log(events[-1])
                driver = launch(["--resume"])
                continue
            # the restart hits a driver at work, not one in its start-up checks (a driver that finds the
            # server down before it starts says so in one line and exits 2, by design: not what this tests)
            if (in_chaos and restart_mlflow and not mlflow_restarts and done >= max(1, n_trials // 2)
                    and past_startup(logs[-1])):
                mlflow.restart()
                mlflow_restarts += 1
                events.append(f"{now - t0:6.0f} s  MLflow server stopped and started again ({done}/{n_trials} finished)")
                log(events[-1])
                continue
            busy = busy_nodes(storage) if in_chaos and kills < raylet_kills and now >= next_kill else []
            if busy:  # a node with a trial mid-run (an idle node's death would test nothing)
                ip = rng.choice(busy)
                cluster.kill_raylet(ip)
                kills += 1
                events.append(f"{now - t0:6.0f} s  raylet of {ip} SIGKILL, node started again ({done}/{n_trials} finished)")
                log(events[-1])
                next_kill = time.monotonic() + rng.uniform(*kill_every)
                continue
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            stop(driver)
    wall = time.monotonic() - t0
    return {"name": name, "finished": len(finished_markers(storage)), "trials": n_trials, "exit_code": code, "wall_s": wall, "events": events,
            "raylet_kills": kills, "driver_kills": driver_kills, "mlflow_restarts": mlflow_restarts,
            "logs": [str(p) for p in logs]}


# --------------------------------------------------------------------------------------------
# What survived
# --------------------------------------------------------------------------------------------
def check(uri: str, name: str, n_trials: int, n_evals: int, storage: Path, logs: list[str]) -> dict:
    """Read MLflow and the storage back: every trial once and FINISHED, every step once, retries, extra work."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"metaocl/{name}")
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    parents = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    trial_runs = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    per_trial = Counter(r.data.tags.get("metaocl.trial_id") for r in trial_runs)
    expected = {f"s{i}" for i in range(n_trials)}
    bad_steps = {}
    for r in trial_runs:
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, MEASURE))
        if steps != list(range(1, n_evals + 1)):
            bad_steps[r.data.tags.get("metaocl.trial_id")] = steps
    not_finished = sorted(r.data.tags.get("metaocl.trial_id") for r in trial_runs if r.info.status != "FINISHED")
    retries = {r.data.tags["metaocl.trial_id"]: int(r.data.tags.get("metaocl.retries", "0")) for r in trial_runs}
    replayed = {r.data.tags["metaocl.trial_id"]: int(r.data.tags.get("metaocl.replayed", "0")) for r in trial_runs}
    tries = Counter(a["trial_id"] for a in attempts(storage))
    out_text = "\n".join(Path(p).read_text(errors="replace") for p in logs)
    return {
        "parents": len(parents),
        "parent_status": sorted({p.info.status for p in parents}),
        "trial_runs": len(trial_runs),
        "trials_once": sorted(per_trial) == sorted(expected) and set(per_trial.values()) == {1},
        "duplicated": sorted(t for t, n in per_trial.items() if n > 1),
        "missing": sorted(expected - set(per_trial)),
        "not_finished": not_finished,
        "bad_steps": bad_steps,
        "retries": retries,
        "retries_histogram": dict(sorted(Counter(retries.values()).items())),
        "attempts": sum(tries.values()),
        "trials_started": len(tries),  # an unfinished sweep has trials that never started
        "replayed_evals": sum(replayed.values()),
        "evals": n_trials * n_evals,
        "retry_lines": out_text.count(" failed, retrying from its last checkpoint: "),
        "traceback_lines": out_text.count("Traceback (most recent call last)"),
        "url_lines": out_text.count("View run "),  # MLflow's per-run link lines (the driver silences them)
    }


def summary(run: dict, got: dict, calm: dict | None) -> str:
    n = run["trials"]
    cut_short = got["attempts"] - got.get("trials_started", n)  # attempts beyond each started trial's first
    lines = [f"{run['name']}: {n} trials, {got['evals']} evaluations; chaos: {run['raylet_kills']} raylet kills, "
             f"{run['driver_kills']} driver SIGKILL + --resume, {run['mlflow_restarts']} MLflow server restart",
             *("  " + e for e in run["events"]),
             f"driver exit status: {run['exit_code']}",
             f"trial runs in MLflow: {got['trial_runs']} (FINISHED exactly once each: "
             f"{'yes' if got['trials_once'] and not got['not_finished'] else 'NO'}; duplicated {got['duplicated']}, "
             f"missing {got['missing']}, not FINISHED {got['not_finished']}); sweep runs: {got['parents']} "
             f"{got['parent_status']}",
             f"metric steps missing or duplicated: {len(got['bad_steps'])} runs {dict(list(got['bad_steps'].items())[:5])}",
             f"retries per trial (retries: trials): {got['retries_histogram']}; attempts started: {got['attempts']} "
             f"for {n} trials",
             f"extra work: evaluations reported again by a retry {got['replayed_evals']} of {got['evals']} "
             f"({got['replayed_evals'] / got['evals']:.1%}); attempts cut short {cut_short} "
             f"(each loses at most its unfinished epoch: <= {(got['replayed_evals'] + cut_short) / got['evals']:.1%} "
             f"of the epochs)",
             f"driver output: {got['retry_lines']} retry lines, {got['traceback_lines']} tracebacks, "
             f"{got.get('url_lines', 0)} MLflow run-link lines"]
    if calm is not None and calm["exit_code"] is not None:
        lines.append(f"wall time: {run['wall_s']:.0f} s under chaos, {calm['wall_s']:.0f} s without "
                     f"(x{run['wall_s'] / calm['wall_s']:.2f})")
    elif calm is not None:  # stopped at its time limit: compare the rates
        lines.append(f"wall time: {run['wall_s']:.0f} s under chaos ({n / run['wall_s'] * 60:.2f} trials/min); "
                     f"without chaos {calm['finished']} of {n} trials finished in {calm['wall_s']:.0f} s before "
                     f"its time limit ({calm['finished'] / calm['wall_s'] * 60:.2f} trials/min)")
    else:
        lines.append(f"wall time: {run['wall_s']:.0f} s under chaos")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        model = f"{fields['Model name']} (family {fields.get('CPU family', '?')} model {fields.get('Model', '?')})"
    except Exception:
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--epochs", default="2,1", help="stage-1,stage-2 epochs of a trial (one evaluation each)")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs of each worker node")
    ap.add_argument("--trial-cpus", type=float, default=0.5, help="CPUs of a trial (0.5: two trials per node CPU)")
    ap.add_argument("--no-reuse", action="store_true",
                    help="a new Ray worker process per trial (default: a worker runs trial after trial, "
                         "METAOCL_REUSE_ACTORS=1)")
    ap.add_argument("--raylet-kills", type=int, default=20, help="at most this many raylet kills")
    ap.add_argument("--kill-every", default="30,60", help="seconds between raylet kills, drawn uniformly in MIN,MAX")
    ap.add_argument("--chaos-minutes", type=float, default=30.0, help="no new fault after this")
    ap.add_argument("--max-failures", type=int, default=10, help="retries per trial")
    ap.add_argument("--no-driver-kill", action="store_true")
    ap.add_argument("--no-mlflow-restart", action="store_true")
    ap.add_argument("--no-calm", action="store_true", help="skip the same sweep without chaos")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-minutes", type=float, default=180.0, help="per sweep: stop it after this")
    a = ap.parse_args(argv)
    epochs = tuple(int(x) for x in a.epochs.split(","))
    kill_every = tuple(float(x) for x in a.kill_every.split(","))
    base = a.workdir or Path(tempfile.mkdtemp(prefix="metaocl-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "shared-storage"  # the folder every node sees (one machine)
    log(f"chaos bench in {base}: {a.trials} trials, {cpu_name()}")
    cluster, mlflow = Cluster(base, a.cpus), MlflowServer(base)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
                    "args": vars(a) | {"workdir": str(base), "json": str(a.json) if a.json else None}}
    try:
        mlflow.up()
        cluster.up()
        log(f"cluster {cluster.address} (3 nodes), MLflow {mlflow.uri}")
        n_evals = sum(epochs)
        common = dict(raylet_kills=a.raylet_kills, kill_every=kill_every, kill_driver=not a.no_driver_kill,
                      restart_mlflow=not a.no_mlflow_restart, chaos_s=a.chaos_minutes * 60,
                      timeout_s=a.timeout_minutes * 60, seed=a.seed, reuse=not a.no_reuse)
        path = sweep_file(base, "chaos", a.trials, epochs, a.max_failures, a.trial_cpus)
        run = run_sweep(base, path, cluster, mlflow, storage, chaos=True, **common)
        got = check(mlflow.uri, "chaos", a.trials, n_evals, storage, run["logs"])
        result.update(run=run, check=got)
        print(summary(run, got, None), flush=True)
        if a.json:
            a.json.write_text(json.dumps(result, indent=1, default=str))
        calm = None
        if not a.no_calm:
            log("the same sweep without chaos")
            calm_path = sweep_file(base, "calm", a.trials, epochs, a.max_failures, a.trial_cpus)
            calm = run_sweep(base, calm_path, cluster, mlflow, base / "calm-storage", chaos=False, **common)
        result.update(run=run, check=got, calm=calm)
        print(summary(run, got, calm), flush=True)
    finally:
        cluster.down()
        mlflow.down()
        if a.json:
            a.json.write_text(json.dumps(result, indent=1, default=str))
        if a.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return result


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill`: the cluster and the server are stopped too
    main()
