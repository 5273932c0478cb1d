"""Run a distributed job as torchrun agents placed on the cluster's nodes by Ray.

Shipped to the cluster as ``mlcloud_ray/elastic.py`` (``py_modules`` of a distributed job) and
started as the Ray job's entrypoint::

    python -m mlcloud_ray.elastic --nodes MIN:MAX [--procs-per-node P] [--max-restarts N]
        [--cpus C] [--gpus G] [--memory BYTES] [--accelerator-type T] --name ID -- CMD ...

The driver hosts torchrun's c10d rendezvous store (bound to its node's address only) and asks
Ray for MAX agent actors, each holding one node's resources, spread over the nodes. Each agent
runs ``torchrun --nnodes=MIN:MAX --rdzv-conf=is_host=false ...`` with the user's unchanged
command, so the job gets exactly what it gets on the local provider: torchrun's elastic
rendezvous, restarts (``--max-restarts``) and the torch.distributed variables
``runtime.init_distributed()`` reads. A node that dies takes its agent with it; torchrun
regroups the survivors (at least MIN) within seconds and the script resumes from its last
checkpoint. The agent is an actor that Ray restarts (``max_restarts=-1``) as soon as a node with
room comes back, and torchrun grows the group to take it in.

``--worker`` is the small shim torchrun starts for each worker: the mlcloud contract's
``MLCLOUD_NUM_NODES`` / ``MLCLOUD_NODE_RANK`` from torchrun's ``GROUP_*`` variables, the job
archive's copy of the runtime when the cluster lacks mlcloud, then ``exec`` of the command.

Standard library only at import time (Ray and torch are imported by the driver and the
agents); it must not import mlcloud, which the cluster may not have.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

# A node that stops sending keep-alives (every 1 s) is dropped from the rendezvous after 5 missed
# ones (torch's default: 3 x 5 s), so the survivors regroup without it within seconds.
RDZV_CONF = (
    "join_timeout=60,last_call_timeout=1,close_timeout=10,is_host=false,"
    "keep_alive_interval=1,keep_alive_max_attempt=5"
)
SETTLE_S = 15.0  # after one agent ended, how long the others get to end the same way


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("mlcloud_ray.elastic: usage: ... -- CMD [ARGS...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="mlcloud_ray.elastic")
    parser.add_argument("--nodes", required=True, help="MIN:MAX")
    parser.add_argument("--procs-per-node", type=int, default=1)
    parser.add_argument("--max-restarts", type=int, default=0)
    parser.add_argument("--cpus", type=float)
    parser.add_argument("--gpus", type=float)
    parser.add_argument("--memory", type=int)
    parser.add_argument("--accelerator-type")
    parser.add_argument("--name", required=True)
    opts = parser.parse_args(argv[:split])
    low, _, high = opts.nodes.partition(":")
    opts.nodes = (int(low), int(high or low))
    return opts, argv[split + 1 :]


# ---- each worker: torchrun's variables -> the mlcloud contract, then the command --------------
def worker(command: list[str]) -> None:
    os.environ["MLCLOUD_NODE_RANK"] = os.environ.get("GROUP_RANK", "0")
    os.environ["MLCLOUD_NUM_NODES"] = os.environ.get("GROUP_WORLD_SIZE", "1")
    print(
        f"[mlcloud] worker rank={os.environ.get('RANK')} world_size={os.environ.get('WORLD_SIZE')}"
        f" node_rank={os.environ['MLCLOUD_NODE_RANK']} num_nodes={os.environ['MLCLOUD_NUM_NODES']}",
        file=sys.stderr,
        flush=True,
    )
    vendor = os.path.join(os.getcwd(), "_mlcloud", "vendor")
    if os.path.isdir(vendor) and importlib.util.find_spec("mlcloud") is None:
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, vendor])  # an installed one wins
    os.execvp(command[0], command)  # noqa: S606 (the user's own command, argv form)


# ---- each agent: one torchrun per node ---------------------------------------------------------
class Agent:
    """A Ray actor holding one node's resources and running torchrun there."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import ray

        self.node = ray.get_runtime_context().get_node_id()[:8]
        address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # unannotated
        argv = torchrun_argv(spec, local_addr=address)
        # a fresh store per rendezvous round (see runtime.init_distributed)
        env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True)
        print(f"[mlcloud] agent started on node {self.node}", flush=True)

    def wait(self) -> tuple[str, int]:
        return self.node, self.proc.wait()

    def stop(self, grace: float) -> None:
        """SIGTERM torchrun (it stops its workers), SIGKILL its group after ``grace``."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def torchrun_argv(spec: dict[str, Any], local_addr: str) -> list[str]:
    """An agent's torchrun: it joins the driver's rendezvous (``is_host=false``) and starts
    each worker through this module's ``--worker`` shim."""
    python = sys.executable
    return [
        python, "-m", "torch.distributed.run",
        f"--nnodes={spec['nodes']}",
        f"--nproc-per-node={spec['procs_per_node']}",
        f"--max-restarts={spec['max_restarts']}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={spec['endpoint']}",
        f"--rdzv-id={spec['name']}",
        f"--rdzv-conf={RDZV_CONF}",
        f"--local-addr={local_addr}",
        "--monitor-interval=0.5",
        "--no-python",
        python, "-m", "mlcloud_ray.elastic", "--worker", "--", *spec["command"],
    ]  # fmt: skip


def rendezvous_store(host: str) -> tuple[Any, int]:
    """torchrun's c10d store, listening on ``host`` only (TCPStore alone binds every interface;
    it adopts a listening socket instead: ``master_listen_fd``)."""
    # torch.distributed re-exports it without declaring it; import it from its home
    from torch._C._distributed_c10d import TCPStore

    sock = socket.create_server((host, 0))
    port = sock.getsockname()[1]
    store = TCPStore(
        host, port, is_master=True, timeout=datetime.timedelta(seconds=600),
        wait_for_workers=False, master_listen_fd=sock.detach(), use_libuv=False,
    )  # fmt: skip
    return store, port


# ---- the driver --------------------------------------------------------------------------------
def actor_options(opts: argparse.Namespace) -> dict[str, Any]:
    """One node's resources per agent, spread over the nodes; restarted whenever Ray has room."""
    options: dict[str, Any] = {
        "num_cpus": opts.cpus if opts.cpus is not None else 1,
        "scheduling_strategy": "SPREAD",
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": 2,  # stop() while wait() blocks
    }
    if opts.gpus:
        options["num_gpus"] = opts.gpus
    if opts.memory:
        options["memory"] = opts.memory
    if opts.accelerator_type:
        options["resources"] = {f"accelerator_type:{opts.accelerator_type}": 0.001}
    return options


def supervise(agents: list[Any]) -> int:
    """Wait for the agents: the job's result is the first agent that ends on its own, unless
    another ends successfully within SETTLE_S (a late agent finds the rendezvous closed). An
    agent lost with its node is waited for again: Ray restarts it when there is room."""
    import ray
    from ray.exceptions import RayActorError

    pending = {agent.wait.remote(): agent for agent in agents}
    first: int | None = None
    deadline: float | None = None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        if not done:
            break
        agent = pending.pop(done[0])
        try:
            node, code = ray.get(done[0])
        except RayActorError:
            time.sleep(1.0)
            pending[agent.wait.remote()] = agent
            continue
        print(f"[mlcloud] agent on node {node} exited {code}", flush=True)
        if code == 0:
            return 0
        if first is None:
            first, deadline = code, time.monotonic() + SETTLE_S
    return first if first is not None else 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--worker"]:
        worker(args[args.index("--") + 1 :])
    opts, command = parse(args)
    import ray

    ray.init()
    host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # unannotated
    store, port = rendezvous_store(host)
    low, high = opts.nodes
    spec = {
        "nodes": f"{low}:{high}",
        "procs_per_node": opts.procs_per_node,
        "max_restarts": opts.max_restarts,
        "endpoint": f"{host}:{port}",
        "name": opts.name,
        "command": command,
    }
    agent_cls: Any = ray.remote(Agent).options(**actor_options(opts))
    agents: list[Any] = [agent_cls.remote(spec) for _ in range(high)]
    print(f"[mlcloud] {low}..{high} nodes, rendezvous on {host}:{port}", flush=True)
    grace = float(os.environ.get("MLCLOUD_GRACE_SECONDS") or 10)

    def stop(signum: int, frame: object) -> None:  # a cancel: the agents stop their workers
        ray.get([a.stop.remote(grace) for a in agents], timeout=grace + 5)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    code = supervise(agents)
    for agent in agents:  # those still waiting for a node, or still closing
        ray.kill(agent)
    del store
    return code


if __name__ == "__main__":
    sys.exit(main())
