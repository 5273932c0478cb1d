"""The single-machine Ray cluster mlcloud starts when a ``type: ray`` profile has no address.

Started on first use (the first call that needs the Jobs API), so no extra command is needed;
it keeps running for the next command, and ``stop`` (``LocalCluster.stop``) ends it. Secure by
default, unlike Ray's own defaults:

* token auth (``RAY_AUTH_MODE=token``): a random token in ``$MLCLOUD_HOME/ray/auth_token``
  (mode 0600), handed to Ray as ``RAY_AUTH_TOKEN_PATH``; an inherited ``RAY_AUTH_TOKEN`` is
  removed, since Ray would prefer it;
* every node's address is 127.0.0.1 and the dashboard / Jobs API listens on 127.0.0.1 unless the
  profile's ``dashboard_host`` says otherwise (the token is required either way);
* usage stats off (``--disable-usage-stats`` and ``RAY_USAGE_STATS_ENABLED=0``).

Every process of the cluster carries ``MLCLOUD_RAY_CLUSTER=<id>`` (and its node's name in
``MLCLOUD_RAY_NODE``) in its environment, inherited by Ray's workers and the jobs' drivers. That
is how ``stop`` and ``kill_node`` find exactly this cluster's processes: ``ray stop`` would end
every Ray process of the machine, other clusters included.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from mlcloud.errors import ConfigError, Origin, ProviderError, Transient
from mlcloud.runtime import ENV_JOB_ID
from providers.ray.settings import RaySettings

CLUSTER_ENV = "MLCLOUD_RAY_CLUSTER"
NODE_ENV = "MLCLOUD_RAY_NODE"
HEAD = "head"
NODES_DIR = "nodes"  # <temp_dir>/nodes/<name>: where each node's `ray start` runs
START_LOG = "start.log"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a cluster stops
_WATCHER = "while kill -s 0 "  # Ray's fate-sharing loop for a job's driver (job_supervisor.py)
HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "5000",
    "RAY_health_check_failure_threshold": "5",
}
_STRIP = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


@dataclass(frozen=True)
class ClusterInfo:
    """What ``$MLCLOUD_HOME/ray/cluster.json`` records about a running cluster."""

    id: str
    dashboard_url: str  # the Jobs API
    gcs_address: str  # where another node joins (host:port)
    temp_dir: str
    token_file: str
    started_at: float

    def token(self) -> str:
        return Path(self.token_file).read_text(encoding="utf-8").strip()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalCluster:
    """The cluster of one ``$MLCLOUD_HOME`` (one per home: its state lives there)."""

    def __init__(self, home: Path, settings: RaySettings, origin: Origin | None = None) -> None:
        self.dir = home / "ray"
        self.settings = settings
        self.origin = origin or Origin("ray")
        self.state_file = self.dir / "cluster.json"
        self.token_file = self.dir / "auth_token"
        digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
        # Short: Ray puts Unix sockets under it (a socket path has at most 107 bytes).
        self.temp_dir = settings.temp_dir or f"{tempfile.gettempdir()}/mlcloud-ray-{digest}"

    # ---- state -------------------------------------------------------------------------------
    def info(self) -> ClusterInfo | None:
        """The recorded cluster, if a record exists (it may have stopped since)."""
        try:
            return ClusterInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> ClusterInfo | None:
        """The recorded cluster when its Jobs API answers with our token."""
        info = self.info()
        if info is None:
            return None
        try:
            status = http_status(f"{info.dashboard_url}/api/version", info.token(), timeout=5)
        except OSError:
            return None
        return info if status == 200 else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One mlcloud process at a time starts or stops this home's cluster."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "cluster.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ensure(self) -> ClusterInfo:
        """The running cluster, started now if there is none (stale processes are ended)."""
        found = self.running()
        if found is not None:
            return found
        with self._locked():
            found = self.running()  # another process may have started it while we waited
            if found is not None:
                return found
            stale = self.info()
            if stale is not None:
                stop_processes(stale.id, stale.temp_dir, grace=STOP_GRACE)
            return self._start()

    # ---- start -------------------------------------------------------------------------------
    def _token(self) -> Path:
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return self.token_file

    def node_env(self, cluster_id: str, node: str) -> dict[str, str]:
        """The environment of ``ray start``: secure settings and this cluster's markers."""
        env = {k: v for k, v in os.environ.items() if k not in _STRIP}
        # "python" in a job's entrypoint is this interpreter (a venv need not be activated)
        path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            PATH=path.rstrip(os.pathsep),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self._token()),
            RAY_USAGE_STATS_ENABLED="0",
            **{CLUSTER_ENV: cluster_id, NODE_ENV: node},
        )
        return env

    def _start(self) -> ClusterInfo:
        conf = self.settings
        cluster_id = secrets.token_hex(6)
        # A node that stops answering is declared dead after ~5 s instead of Ray's ~30 s, so an
        # elastic job regroups without it quickly (a busy node still has 5 s to answer a check).
        env = {**self.node_env(cluster_id, HEAD), **HEALTH_CHECKS}
        gcs, dashboard = free_port(), free_port(conf.dashboard_host)
        argv = [
            *ray_cli(), "start", "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--include-dashboard=true",
            f"--dashboard-host={conf.dashboard_host}",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *node_resources(conf.num_cpus, conf.num_gpus),
        ]  # fmt: skip
        # a wildcard bind is reached from here through loopback
        wildcard = conf.dashboard_host in ("0.0.0.0", "::")  # noqa: S104 (compared, not bound)
        host = "127.0.0.1" if wildcard else conf.dashboard_host
        info = ClusterInfo(
            id=cluster_id,
            dashboard_url=f"http://{_url_host(host)}:{dashboard}",
            gcs_address=f"127.0.0.1:{gcs}",
            temp_dir=self.temp_dir,
            token_file=str(self.token_file),
            started_at=time.time(),
        )
        # recorded first: what a failed start left running is found (and ended) by its id
        self.state_file.write_text(json.dumps(asdict(info), indent=2))
        try:
            self._run(argv, env, HEAD)
            self._wait_ready(info)
        except BaseException:
            stop_processes(cluster_id, self.temp_dir, grace=STOP_GRACE)
            raise
        return info

    def _run(self, argv: list[str], env: Mapping[str, str], node: str) -> None:
        """``ray start`` (it starts the node's daemons and returns); its output goes to
        ``start.log``, quoted in the error when it fails."""
        log = self.dir / START_LOG
        cwd = Path(self.temp_dir, NODES_DIR, node)
        cwd.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {node}\n")
            out.flush()
            try:
                code = subprocess.run(
                    argv, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, timeout=self.settings.start_timeout, check=False,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = -1
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise self.origin.error(
                ProviderError,
                f"could not start the local Ray cluster's {node} node (ray start exited "
                f"{code}):\n{tail}",
                code="ClusterStartFailed",
                hint=f"see {log}",
            )

    def _wait_ready(self, info: ClusterInfo) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if http_status(f"{info.dashboard_url}/api/version", info.token()) == 200:
                    return
            time.sleep(0.25)
        raise self.origin.error(
            Transient,
            f"the local Ray cluster's Jobs API at {info.dashboard_url} did not answer within "
            f"{self.settings.start_timeout:.0f}s",
            code="ClusterStartTimeout",
            hint=f"see {self.dir / START_LOG} and {self.temp_dir}/session_latest/logs",
        )

    # ---- more nodes, fewer nodes -------------------------------------------------------------
    def add_node(self, name: str, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        """Start another node of this cluster on this machine (tests, benchmarks, a user who
        wants Ray to see several nodes)."""
        info = self.ensure()
        if name == HEAD or cluster_processes(info.id, info.temp_dir, node=name):
            raise ConfigError(f"the local Ray cluster already has a node {name!r}")
        # a node that comes back starts afresh: its log monitor would re-send the old logs
        shutil.rmtree(Path(info.temp_dir, NODES_DIR, name), ignore_errors=True)
        argv = [
            *ray_cli(), "start",
            f"--address={info.gcs_address}",
            "--node-ip-address=127.0.0.1",
            # its own temp dir: nodes sharing one would each stream every node's worker logs
            f"--temp-dir={Path(info.temp_dir, NODES_DIR, name)}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            *node_resources(num_cpus, num_gpus),
        ]  # fmt: skip
        self._run(argv, self.node_env(info.id, name), name)

    def kill_node(self, name: str) -> int:
        """SIGKILL one node's processes (a node failure); returns how many were killed."""
        info = self.info()
        if info is None:
            return 0
        procs = cluster_processes(info.id, info.temp_dir, node=name)
        _signal(procs, signal.SIGKILL)
        return len(procs)

    def stop(self, grace: float = STOP_GRACE) -> int:
        """End every process of this cluster (SIGTERM, SIGKILL after ``grace``); returns how
        many there were. Nothing else on the machine is touched."""
        with self._locked():
            info = self.info()
            if info is None:
                return 0
            count = stop_processes(info.id, info.temp_dir, grace=grace)
            self.state_file.unlink(missing_ok=True)
            return count


# ---- processes ---------------------------------------------------------------------------------
def ray_cli() -> list[str]:
    """``ray`` of this interpreter (a ``ray`` on PATH may belong to another installation)."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def node_resources(num_cpus: int | None, num_gpus: int | None) -> list[str]:
    flags = []
    if num_cpus is not None:
        flags.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        flags.append(f"--num-gpus={num_gpus}")
    return flags


def cluster_processes(
    cluster_id: str, temp_dir: str, node: str | None = None
) -> list[psutil.Process]:
    """Live processes of the cluster (or of one node of it), and everything they started.

    A process is the cluster's when its environment carries the cluster's id, or, since many of
    Ray's processes retitle themselves (``ray::IDLE``) which blanks what ``/proc`` shows of
    their environment, when its working directory is the node's directory under the cluster's
    temp dir (``ray start`` runs there). Descendants are collected before anything is
    signalled, so killing a raylet orphans nothing.
    """
    me = os.getpid()
    root = str(Path(temp_dir, NODES_DIR, node) if node else Path(temp_dir))
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me or proc.pid in found:
            continue
        try:
            env = proc.environ()
            marked = env.get(CLUSTER_ENV) == cluster_id and node in (None, env.get(NODE_ENV))
            if not (marked or _under(proc.cwd(), root)):
                continue
            found[proc.pid] = proc
            found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return [p for p in found.values() if _alive(p)]


def job_processes(job_id: str) -> list[psutil.Process]:
    """Live processes whose environment names this mlcloud job: its driver, torchrun, the
    user's processes, and Ray's own for the job (``ray::JobSupervisor`` and its watcher)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != me and proc.environ().get(ENV_JOB_ID) == job_id and _alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def ray_own(proc: psutil.Process) -> bool:
    """One of Ray's processes for a job: a worker or actor (``ray::...``), or the job
    supervisor's watcher (``while kill -s 0 <supervisor>; do sleep 1; done; kill -9 -<driver
    group>``) and its ``sleep 1``, which may outlive the watcher by a second. Ray ends these."""
    try:
        if proc.name().startswith("ray::"):  # also while exiting, when its argv reads empty
            return True
        argv = proc.cmdline() or [""]
    except psutil.Error:
        return False
    return argv[0].startswith("ray::") or argv[-1].startswith(_WATCHER) or argv == ["sleep", "1"]


def user_processes(job_id: str) -> list[psutil.Process]:
    """The job's processes that are not Ray's: its driver, torchrun, the user's. Looked at
    again last: one that exited meanwhile is a zombie with no command line to judge by."""
    return [p for p in job_processes(job_id) if not ray_own(p) and _alive(p)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def stop_processes(cluster_id: str, temp_dir: str, grace: float) -> int:
    """SIGTERM the cluster's processes, SIGKILL what is left after ``grace``."""
    procs = cluster_processes(cluster_id, temp_dir)
    _signal(procs, signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=grace)
    left += [p for p in cluster_processes(cluster_id, temp_dir) if p not in left]
    _signal(left, signal.SIGKILL)
    psutil.wait_procs(left, timeout=5)
    return len(procs)


# ---- http --------------------------------------------------------------------------------------
def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def http_status(url: str, token: str | None, timeout: float = 5.0) -> int:
    """The HTTP status of a GET (no proxies: these are the cluster's own addresses).
    ``OSError`` when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http(s) only)
    try:
        with opener.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
