"""The in-container launcher: platform environment → the MLCLOUD_* contract → the user's command.

    python _mlcloud/launcher.py --platform {sagemaker,vertex,azureml,local,ray}
        [--nproc-per-node N] [--distributed] [--master-port 29500]
        [--input NAME=PATH ...] [--output NAME=PATH ...] -- cmd args...

Standard library only, and kept compatible with Python 3.8: it is shipped inside every job
archive and runs on whatever Python the training image has. The variable names are those of
``mlcloud/runtime.py``, which this file cannot import (it may not be installed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

MODEL_DIR = "MLCLOUD_MODEL_DIR"
OUTPUT_DIR = "MLCLOUD_OUTPUT_DIR"
CHECKPOINT_DIR = "MLCLOUD_CHECKPOINT_DIR"
INPUT_PREFIX = "MLCLOUD_INPUT_"
HPARAMS = "MLCLOUD_HPARAMS"
NUM_NODES = "MLCLOUD_NUM_NODES"
NODE_RANK = "MLCLOUD_NODE_RANK"
PROVIDER_TYPE = "MLCLOUD_PROVIDER_TYPE"
CODE_CHANNEL = "mlcloud_code"
DEFAULT_MASTER_PORT = 29500
DEFAULT_GRACE_SECONDS = 20.0


def _truthy(value: str | None) -> bool:
    return bool(value) and str(value).strip().lower() not in ("0", "false", "no", "off")


def _read_json(path: Path) -> object | None:
    try:
        value: object = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def _decode(value: object) -> object:
    """SageMaker stores hyperparameters as strings; recover numbers, bools, lists where possible."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _hosts(hosts: list[str], current: str) -> dict[str, str]:
    ordered = sorted(hosts)
    if not ordered:
        return {}
    rank = ordered.index(current) if current in ordered else 0
    return {NUM_NODES: str(len(ordered)), NODE_RANK: str(rank), "MASTER_ADDR": ordered[0]}


# ---- SageMaker ------------------------------------------------------------------------------
def env_for_sagemaker(environ: Mapping[str, str], fs_root: Path = Path("/")) -> dict[str, str]:
    ml = fs_root / "opt" / "ml"
    out: dict[str, str] = {
        MODEL_DIR: environ.get("SM_MODEL_DIR") or str(ml / "model"),
        OUTPUT_DIR: environ.get("SM_OUTPUT_DATA_DIR") or str(ml / "output" / "data"),
    }
    checkpoints = ml / "checkpoints"
    if _truthy(environ.get("MLCLOUD_CHECKPOINT")) or checkpoints.is_dir():
        out[CHECKPOINT_DIR] = str(checkpoints)

    # Channels: SM_CHANNEL_* (set by the SageMaker training toolkit), else the container
    # contract's inputdataconfig.json / input/data/<channel> (images without the toolkit).
    channels: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("SM_CHANNEL_") and key != "SM_CHANNELS":
            channels[key[len("SM_CHANNEL_") :]] = value
    if not channels:
        data = ml / "input" / "data"
        config = _read_json(ml / "input" / "config" / "inputdataconfig.json")
        names = list(config) if isinstance(config, dict) else []
        if not names and data.is_dir():
            names = [p.name for p in data.iterdir()]
        channels = {name: str(data / name) for name in names}
    for name, path in channels.items():
        if name.lower() != CODE_CHANNEL:
            out[INPUT_PREFIX + name.upper()] = path

    if not environ.get(HPARAMS):
        hps = _read_json_str(environ.get("SM_HPS"))
        if hps is None:
            hps = _read_json(ml / "input" / "config" / "hyperparameters.json")
        if isinstance(hps, dict):
            decoded = {k: _decode(v) for k, v in hps.items() if not k.startswith("sagemaker_")}
            out[HPARAMS] = json.dumps(decoded, sort_keys=True)

    hosts = _read_json_str(environ.get("SM_HOSTS"))
    current = environ.get("SM_CURRENT_HOST", "")
    if not isinstance(hosts, list):
        resource = _read_json(ml / "input" / "config" / "resourceconfig.json")
        if isinstance(resource, dict):
            hosts = resource.get("hosts")
            current = str(resource.get("current_host", ""))
    if isinstance(hosts, list):
        out.update(_hosts([str(h) for h in hosts], current))
    return out


def _read_json_str(raw: str | None) -> object | None:
    if not raw:
        return None
    try:
        value: object = json.loads(raw)
    except ValueError:
        return None
    return value


# ---- Vertex AI ------------------------------------------------------------------------------
def gcs_to_fuse(uri: str, fs_root: Path = Path("/")) -> str:
    """gs://bucket/path → /gcs/bucket/path, where Vertex mounts buckets with Cloud Storage FUSE."""
    if uri.startswith("gs://"):
        return str(fs_root / "gcs" / uri[len("gs://") :])
    return uri


def env_for_vertex(environ: Mapping[str, str], fs_root: Path = Path("/")) -> dict[str, str]:
    out: dict[str, str] = {}
    # What the plan set explicitly wins over Vertex's defaults. AIP_CHECKPOINT_DIR is never
    # used on its own: Vertex sets it for every job with an output directory, and a job with no
    # checkpoint configured must not get one silently (`checkpoint: auto` is planned as that
    # same location, passed as MLCLOUD_CHECKPOINT_DIR).
    if environ.get("AIP_MODEL_DIR") and not environ.get(MODEL_DIR):
        out[MODEL_DIR] = gcs_to_fuse(environ["AIP_MODEL_DIR"], fs_root)
    # An explicit `output:` from the provider beats the TensorBoard dir, which Vertex only sets
    # when a TensorBoard instance is attached.
    if environ.get("AIP_TENSORBOARD_LOG_DIR") and not environ.get(OUTPUT_DIR):
        out[OUTPUT_DIR] = gcs_to_fuse(environ["AIP_TENSORBOARD_LOG_DIR"], fs_root)
    # The provider passes inputs and dirs as gs:// URIs; the job reads them through the mount.
    for key, value in environ.items():
        mapped = key.startswith(INPUT_PREFIX) or key in (MODEL_DIR, OUTPUT_DIR, CHECKPOINT_DIR)
        if mapped and key not in out and value.startswith("gs://"):
            out[key] = gcs_to_fuse(value, fs_root)

    spec = _read_json_str(environ.get("CLUSTER_SPEC"))
    if isinstance(spec, dict) and isinstance(spec.get("cluster"), dict):
        cluster: dict[str, list[str]] = {
            str(k): list(v) for k, v in spec["cluster"].items() if isinstance(v, list)
        }
        pools = sorted(cluster)  # workerpool0 < workerpool1 < ...
        task = spec.get("task") or {}
        offset = 0
        rank = 0
        for pool in pools:
            if pool == task.get("type"):
                rank = offset + int(task.get("index", 0))
            offset += len(cluster[pool])
        out[NUM_NODES] = str(offset)
        out[NODE_RANK] = str(rank)
        chief = cluster.get("workerpool0") or (cluster[pools[0]] if pools else [])
        if chief:
            # Replica hosts are service names that expose only the port CLUSTER_SPEC gives
            # ("workerpool0-0:2222"): the rendezvous must use it, not torchrun's 29500.
            host, _, port = chief[0].rpartition(":")
            out["MASTER_ADDR"] = host if port.isdigit() else chief[0]
            if port.isdigit():
                out["MASTER_PORT"] = port
    # Vertex's PyTorch containers set these themselves; theirs win.
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if environ.get(key):
            out[key] = environ[key]
    return out


# ---- Azure ML -------------------------------------------------------------------------------
_AZURE_OUTPUTS = {"model": MODEL_DIR, "output": OUTPUT_DIR, "checkpoints": CHECKPOINT_DIR}


def env_for_azureml(environ: Mapping[str, str], fs_root: Path = Path("/")) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in environ.items():
        upper = key.upper()
        if upper.startswith("AZURE_ML_INPUT_") and value:
            out[INPUT_PREFIX + upper[len("AZURE_ML_INPUT_") :]] = value
        elif upper.startswith("AZURE_ML_OUTPUT_") and value:
            ours = _AZURE_OUTPUTS.get(key[len("AZURE_ML_OUTPUT_") :].lower())
            if ours:
                out[ours] = value
    # PyTorchDistribution (one process per node, torchrun is ours) sets AZUREML_NODE_COUNT,
    # NODE_RANK, MASTER_ADDR/PORT, and WORLD_SIZE/RANK counted in nodes; older images only
    # AZ_BATCHAI_TASK_INDEX and AZ_BATCH_MASTER_NODE ("addr:port").
    nodes = environ.get("AZUREML_NODE_COUNT") or environ.get("WORLD_SIZE")
    if nodes:
        out[NUM_NODES] = nodes
    rank = environ.get("NODE_RANK") or environ.get("AZ_BATCHAI_TASK_INDEX")
    if rank is None and environ.get("WORLD_SIZE") and not environ.get("AZUREML_NODE_COUNT"):
        rank = environ.get("RANK")
    if rank:
        out[NODE_RANK] = rank
    master = environ.get("AZ_BATCH_MASTER_NODE", "")
    if environ.get("MASTER_ADDR"):
        out["MASTER_ADDR"] = environ["MASTER_ADDR"]
    elif master:
        out["MASTER_ADDR"] = master.rsplit(":", 1)[0]
    if environ.get("MASTER_PORT"):
        out["MASTER_PORT"] = environ["MASTER_PORT"]
    elif ":" in master:
        out["MASTER_PORT"] = master.rsplit(":", 1)[1]
    return out


def env_for_local(environ: Mapping[str, str], fs_root: Path = Path("/")) -> dict[str, str]:
    return {}


PLATFORMS: dict[str, Callable[[Mapping[str, str], Path], dict[str, str]]] = {
    "sagemaker": env_for_sagemaker,
    "vertex": env_for_vertex,
    "azureml": env_for_azureml,
    "local": env_for_local,
    "ray": env_for_local,  # the Ray provider sets the MLCLOUD_* variables itself
}


# ---- the launch -----------------------------------------------------------------------------
class Args:
    def __init__(self) -> None:
        self.platform = "local"
        self.nproc_per_node = 1
        self.distributed = False
        self.master_port: int | None = None
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.command: list[str] = []


def parse_args(argv: list[str]) -> Args:
    """Hand-rolled so that everything after ``--`` is passed through untouched."""
    if "--" not in argv:
        raise SystemExit("mlcloud launcher: usage: launcher.py --platform P [...] -- cmd ...")
    split = argv.index("--")
    own, args = argv[:split], Args()
    args.command = argv[split + 1 :]
    i = 0
    while i < len(own):
        flag = own[i]
        if flag == "--distributed":
            args.distributed = True
            i += 1
            continue
        if i + 1 >= len(own):
            raise SystemExit(f"mlcloud launcher: {flag} needs a value")
        value = own[i + 1]
        if flag == "--platform":
            if value not in PLATFORMS:
                raise SystemExit(f"mlcloud launcher: unknown platform {value!r}")
            args.platform = value
        elif flag in ("--nproc-per-node", "--master-port"):
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"mlcloud launcher: {flag} wants a positive number, got {value!r}")
            if flag == "--nproc-per-node":
                args.nproc_per_node = int(value)
            else:
                args.master_port = int(value)
        elif flag in ("--input", "--output"):
            name, sep, path = value.partition("=")
            if not sep or not name:
                raise SystemExit(f"mlcloud launcher: {flag} wants NAME=PATH, got {value!r}")
            (args.inputs if flag == "--input" else args.outputs)[name] = path
        else:
            raise SystemExit(f"mlcloud launcher: unknown option {flag}")
        i += 2
    if not args.command:
        raise SystemExit("mlcloud launcher: no command after --")
    return args


def build_env(args: Args, environ: Mapping[str, str], fs_root: Path = Path("/")) -> dict[str, str]:
    env = dict(environ)
    env.update(PLATFORMS[args.platform](environ, fs_root))
    # Paths given on the command line (Azure ML substitutes ${{inputs.x}} there) are the most
    # concrete of all.
    for name, path in args.inputs.items():
        env[INPUT_PREFIX + name.upper()] = path
    for name, path in args.outputs.items():
        key = _AZURE_OUTPUTS.get(name.lower())
        if key:
            env[key] = path
    env.setdefault(PROVIDER_TYPE, args.platform)
    env.setdefault(NUM_NODES, "1")
    env.setdefault(NODE_RANK, "0")
    # The vendored copy is only for images without mlcloud: PYTHONPATH entries precede
    # site-packages, so an installed mlcloud would otherwise be shadowed by the copy.
    vendor = Path(__file__).resolve().parent / "vendor"
    if vendor.is_dir() and importlib.util.find_spec("mlcloud") is None:
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*parts, str(vendor)])
    return env


# ---- secrets: references in the plan, values read here with the job's own identity -----------
SECRET_REF_PREFIX = "MLCLOUD_SECRETREF_"  # noqa: S105 (a variable name; mlcloud.sensitive)


class SecretError(RuntimeError):
    """A secret reference this job cannot read: the command does not start without it."""


def resolve_secrets(env: dict[str, str], fetch: Callable[..., str] | None = None) -> dict[str, str]:
    """Each ``MLCLOUD_SECRETREF_<NAME>=<reference>`` becomes ``NAME=<the secret>``: the plan,
    the request and mlcloud's store only ever hold the reference."""
    fetch = fetch or fetch_secret
    out = {k: v for k, v in env.items() if not k.startswith(SECRET_REF_PREFIX)}
    for key, ref in sorted(env.items()):
        if key.startswith(SECRET_REF_PREFIX):
            name = key[len(SECRET_REF_PREFIX) :]
            try:
                out[name] = fetch(ref, env)
            except Exception as exc:  # any failure: a clear line, and no run without it
                raise SecretError(f"cannot read the secret for {name} ({ref}): {exc}") from None
    return out


def fetch_secret(ref: str, env: Mapping[str, str]) -> str:
    if ref.startswith("arn:"):
        return _aws_secret(ref)
    if ref.startswith("projects/"):
        return _gcp_secret(ref, env)
    if ".vault." in ref:
        return _azure_secret(ref, env)
    raise SecretError("not an AWS, Secret Manager or Key Vault reference")


def _aws_secret(arn: str) -> str:
    """Secrets Manager or SSM (SecureString), with the training job's role (boto3, which
    SageMaker's framework images ship)."""
    import boto3

    region = arn.split(":")[3]
    if arn.split(":")[2] == "ssm":
        ssm = boto3.client("ssm", region_name=region)
        return str(ssm.get_parameter(Name=arn, WithDecryption=True)["Parameter"]["Value"])
    answer = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)
    if "SecretString" in answer:
        return str(answer["SecretString"])
    return bytes(answer["SecretBinary"]).decode("utf-8")


def _http_json(url: str, headers: Mapping[str, str]) -> dict:  # type: ignore[type-arg]
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise SecretError(f"{url!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 (checked above)
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (checked above)
        return dict(json.loads(answer.read().decode("utf-8")))


def _gcp_secret(name: str, env: Mapping[str, str]) -> str:
    """Secret Manager's REST API with the job's service account token (metadata server)."""
    import base64

    metadata = env.get("GCE_METADATA_HOST") or "metadata.google.internal"
    token_url = f"http://{metadata}/computeMetadata/v1/instance/service-accounts/default/token"
    token = _http_json(token_url, {"Metadata-Flavor": "Google"})["access_token"]
    base = env.get("MLCLOUD_SECRETMANAGER_URL") or "https://secretmanager.googleapis.com"
    answer = _http_json(f"{base}/v1/{name}:access", {"Authorization": f"Bearer {token}"})
    return base64.b64decode(answer["payload"]["data"]).decode("utf-8")


def _azure_secret(uri: str, env: Mapping[str, str]) -> str:
    """Key Vault's REST API with the compute's managed identity."""
    resource = "https://vault.azure.net"
    if env.get("IDENTITY_ENDPOINT") and env.get("IDENTITY_HEADER"):
        token_url = f"{env['IDENTITY_ENDPOINT']}?api-version=2019-08-01&resource={resource}"
        headers = {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]}
    elif env.get("MSI_ENDPOINT"):  # Azure ML compute clusters
        token_url = f"{env['MSI_ENDPOINT']}?api-version=2017-09-01&resource={resource}"
        headers = {"secret": env["MSI_SECRET"]} if env.get("MSI_SECRET") else {"Metadata": "true"}
    else:  # the instance metadata service
        token_url = (
            "http://169.254.169.254/metadata/identity/oauth2/token"
            f"?api-version=2018-02-01&resource={resource}"
        )
        headers = {"Metadata": "true"}
    client_id = env.get("DEFAULT_IDENTITY_CLIENT_ID") or env.get("AZURE_CLIENT_ID")
    if client_id:
        token_url += f"&client_id={client_id}"
    token = _http_json(token_url, headers)["access_token"]
    vault = env.get("MLCLOUD_KEYVAULT_URL")  # a test's stand-in for https://<vault>.vault...
    url = f"{vault}/{uri.split('/', 3)[3]}" if vault else uri
    return str(_http_json(f"{url}?api-version=7.4", {"Authorization": f"Bearer {token}"})["value"])


def build_command(args: Args, env: dict[str, str]) -> list[str]:
    nodes, nproc = int(env[NUM_NODES]), args.nproc_per_node
    if not (args.distributed or nodes > 1 or nproc > 1):
        return list(args.command)
    port = args.master_port or int(env.get("MASTER_PORT") or DEFAULT_MASTER_PORT)
    # Static rendezvous: a cloud job's node count is fixed, and every node knows its rank.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--node-rank={env[NODE_RANK]}",
        f"--nproc-per-node={nproc}",
        f"--master-addr={env.get('MASTER_ADDR') or '127.0.0.1'}",
        f"--master-port={port}",
        "--no-python",
        "--",
        *args.command,
    ]


def run(command: list[str], env: dict[str, str], grace: float) -> int:
    """Run ``command`` in its own process group, forwarding SIGTERM/SIGINT to the whole group."""
    state: dict[str, object] = {"child": None, "signal": None}

    def kill_later(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def forward(signum: int, frame: object) -> None:
        first = state["signal"] is None
        state["signal"] = signum
        child = state["child"]
        if isinstance(child, subprocess.Popen):
            try:
                os.killpg(child.pid, signum)
            except (ProcessLookupError, PermissionError):
                return
            if first:
                timer = threading.Timer(grace, kill_later, args=(child.pid,))
                timer.daemon = True
                timer.start()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        print(f"[mlcloud] cannot start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127
    state["child"] = child
    pending = state["signal"]
    if isinstance(pending, int):  # arrived while the child was starting
        state["signal"] = None
        forward(pending, None)
    code = child.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None, fs_root: Path | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if fs_root is None:
        # Tests lay out /opt/ml or /gcs under a temp dir; in a real container this is unset.
        fs_root = Path(os.environ.get("MLCLOUD_FS_ROOT") or "/")
    env = build_env(args, os.environ, fs_root)
    try:
        env = resolve_secrets(env)
    except SecretError as exc:
        print(f"[mlcloud] {exc}", file=sys.stderr, flush=True)
        return 1
    command = build_command(args, env)
    # Names and ranks only: environment values can hold credentials.
    print(
        f"[mlcloud] platform={args.platform} node_rank={env[NODE_RANK]} "
        f"num_nodes={env[NUM_NODES]} nproc_per_node={args.nproc_per_node} "
        f"cmd={shlex.join(args.command)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        grace = float(os.environ.get("MLCLOUD_GRACE_SECONDS") or DEFAULT_GRACE_SECONDS)
    except ValueError:
        grace = DEFAULT_GRACE_SECONDS
    return run(command, env, grace)


if __name__ == "__main__":
    sys.exit(main())
