"""Portable specs: what the user asks for, independent of any provider.

Frozen pydantic v2 models with ``extra="forbid"``: pure values that round-trip through YAML and
export a JSON Schema (``mlcloud schema job``). Human units stay as written (``"4Gi"``, ``"1h"``)
so a spec dumps back to what the user wrote; the ``*_bytes`` / ``*_seconds`` properties give the
parsed numbers. Every validation failure becomes a ``SpecError`` that names the field, the bad
value and what is allowed (see :func:`spec_error`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from mlcloud import modeldir, sensitive
from mlcloud.errors import SpecError
from mlcloud.units import parse_duration, parse_size

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
InputName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")]
_ACCEL = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,31})?(?::?([1-9][0-9]?))?$")
FRAMEWORKS = ("sklearn", "pytorch", "xgboost")


def _scalar_to_str(value: object) -> object:
    # YAML turns `DEBUG: 1` into an int; env values are strings everywhere they end up.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=True)


class FromEnv(_Spec):
    """``{from_env: NAME}``: the value of ``NAME`` in the submitter's environment, read when
    the job is submitted and handed to its processes; never written to the store or a plan."""

    from_env: EnvName


class SecretRef(_Spec):
    """``{secret: URI}``: a secret in the cloud's own store, read by the job when it starts:
    an AWS Secrets Manager or SSM parameter ARN (SageMaker), a Secret Manager version
    ``projects/P/secrets/S/versions/V`` (Vertex), a Key Vault secret URL (Azure ML)."""

    secret: Annotated[str, StringConstraints(min_length=1, max_length=2048)]


EnvEntry = EnvValue | FromEnv | SecretRef


class TrustGrant(_Spec):
    """Why a deployment's model may run its own code when loaded (a pickle, a torch module
    class, a custom predictor): set by mlcloud's deploy, recorded with the endpoint.

    ``by``: ``job`` (a job mlcloud ran produced exactly this model: ``digest`` is the one
    recorded when it finished), ``registry`` (a registered model version), or ``trust-code``
    (the user said so). ``digest`` pins the grant to one content; ``None`` only for a remote
    model that cannot be read here (the serving container then loads whatever is there).
    """

    by: Literal["job", "registry", "trust-code"]
    job: str | None = None
    digest: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None

    @property
    def env_value(self) -> str:
        """What the serving container's :data:`mlcloud.modeldir.TRUST_ENV` says."""
        return self.digest or modeldir.TRUST_ANY


class Framework(_Spec):
    """A prebuilt framework image instead of ``image``: ``{name: sklearn, version: "1.5"}``."""

    name: Literal["sklearn", "pytorch", "xgboost"]
    version: Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+){0,2}$")]


class Resources(_Spec):
    """What one node needs. ``instance_type`` maps provider type → native type and wins."""

    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    memory: str | int | None = Field(default=None, description="e.g. 512Mi, 4Gi, 16G")
    accelerators: str | int | None = Field(
        default=None, description='"T4:1", "A100:8", "H100" (one) or a GPU count'
    )
    instance_type: dict[str, str] = Field(default_factory=dict)

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            parse_size(v)
        return v

    @field_validator("accelerators")
    @classmethod
    def _check_accelerators(cls, v: str | int | None) -> str | int | None:
        if v is None:
            return v
        if isinstance(v, int):
            if not 0 < v <= 64:
                raise ValueError("a GPU count must be between 1 and 64")
            return v
        m = _ACCEL.fullmatch(v.strip())
        if not v.strip() or m is None or (m.group(1) is None and m.group(2) is None):
            raise ValueError("expected 'TYPE:COUNT' like 'T4:1' or 'A100:8', a type, or a count")
        return v.strip()

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory)

    @property
    def accelerator_count(self) -> int:
        if self.accelerators is None:
            return 0
        if isinstance(self.accelerators, int):
            return self.accelerators
        m = _ACCEL.fullmatch(self.accelerators)
        assert m is not None  # validated above
        return int(m.group(2)) if m.group(2) else 1

    @property
    def accelerator_type(self) -> str | None:
        if self.accelerators is None or isinstance(self.accelerators, int):
            return None
        m = _ACCEL.fullmatch(self.accelerators)
        assert m is not None
        return m.group(1).upper() if m.group(1) else None


class NodeRange(_Spec):
    """Elastic node count: the job runs with any count in [min, max]."""

    min: Annotated[int, Field(ge=1, le=512)]
    max: Annotated[int, Field(ge=1, le=512)]

    @model_validator(mode="after")
    def _ordered(self) -> NodeRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class TrainingJob(_Spec):
    """One training job, the same on every provider (the ``job.yaml`` file)."""

    name: Name = Field(description="lowercase letters, digits and '-', at most 48 characters")
    source: str = Field(default=".", description="directory shipped with the job")
    command: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]
    image: Annotated[str, StringConstraints(min_length=1)] | None = None
    framework: Framework | None = None
    resources: Resources = Field(default_factory=Resources)
    nodes: Annotated[int, Field(ge=1, le=512)] | NodeRange = 1
    procs_per_node: Annotated[int, Field(ge=1, le=64)] = 1
    spot: bool = False
    checkpoint: str | None = None
    max_runtime: str | int = "24h"
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 0
    inputs: dict[InputName, Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=dict
    )
    output: str | None = None
    hyperparameters: dict[Annotated[str, StringConstraints(min_length=1)], JsonValue] = Field(
        default_factory=dict
    )
    env: dict[EnvName, EnvEntry] = Field(
        default_factory=dict,
        description="values, {from_env: NAME} (your shell's variable, never stored) or "
        "{secret: URI} (the cloud's secret store)",
    )

    @field_validator("max_runtime")
    @classmethod
    def _check_runtime(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v

    @field_validator("env")
    @classmethod
    def _no_reserved_env(cls, v: dict[str, object]) -> dict[str, object]:
        reserved = sorted(k for k in v if k.startswith("MLCLOUD_"))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)}: MLCLOUD_* variables are set by mlcloud itself"
            )
        return v

    @model_validator(mode="after")
    def _image_or_framework(self) -> TrainingJob:
        if self.image is not None and self.framework is not None:
            raise ValueError("set either image or framework, not both")
        return self

    @property
    def env_json(self) -> dict[str, str | dict[str, str]]:
        """``env`` as plain JSON: a value, or a ``{from_env: ...}`` / ``{secret: ...}`` mapping."""
        return {
            k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
            for k, v in self.env.items()
        }

    @property
    def env_values(self) -> dict[str, str]:
        """The plain values of ``env`` (no secret references)."""
        return {k: v for k, v in self.env.items() if isinstance(v, str)}

    @property
    def max_runtime_seconds(self) -> int:
        return parse_duration(self.max_runtime)

    @property
    def min_nodes(self) -> int:
        return self.nodes if isinstance(self.nodes, int) else self.nodes.min

    @property
    def max_nodes(self) -> int:
        return self.nodes if isinstance(self.nodes, int) else self.nodes.max

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes

    @property
    def distributed(self) -> bool:
        """Launched under torchrun: several nodes, an elastic range, or several procs per node."""
        return self.max_nodes > 1 or self.elastic or self.procs_per_node > 1


class ReplicaRange(_Spec):
    """Autoscaling bounds; ``target`` is the in-flight requests per replica to scale on."""

    min: Annotated[int, Field(ge=0, le=1000)] = 1
    max: Annotated[int, Field(ge=1, le=1000)] = 1
    target: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Capture(_Spec):
    """``capture: {sample: 0.1, max_mb: 512}``: record sampled requests and predictions for
    monitoring (issue 13). Local: JSON Lines under the endpoint's directory (serving/capture.py);
    the clouds: their native capture (SageMaker DataCaptureConfig, Vertex request-response
    logging, Azure ML data collection), read back by ``mlcloud.monitor.capture.read_window``."""

    sample: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.1, description="fraction of requests recorded (0 < sample <= 1)"
    )
    max_mb: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=512, description="local: the capture directory's cap; the oldest files go first"
    )


class DriftAction(_Spec):
    pipeline: Name = Field(description="the pipeline whose `drift` trigger fires")


class Monitor(_Spec):
    """``monitor: {every: 1h, on_drift: {pipeline: NAME}}``: the scheduler checks the endpoint's
    drift on this schedule and fires the pipeline's drift trigger (mlcloud.monitor)."""

    every: str | int = Field(default="1h", description="how often to check: 30m, 1h, 1d…")
    on_drift: DriftAction | None = None
    window: str | int = Field(default="24h", description="the captured requests checked")
    cooldown: str | int = Field(
        default="24h", description="after firing, a new drift waits this long to fire again"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="per feature (* for all): a test's p-value level or "
        "a distance's threshold (mlcloud monitor --threshold)",
    )  # fmt: skip

    @field_validator("every")
    @classmethod
    def _check_every(cls, v: str | int) -> str | int:
        if parse_duration(v) < 60:
            raise ValueError("must be at least 1m")
        return v

    @field_validator("window", "cooldown")
    @classmethod
    def _check_duration(cls, v: str | int) -> str | int:
        parse_duration(v)  # raises ValueError with the accepted forms
        return v

    @property
    def every_seconds(self) -> int:
        return parse_duration(self.every)


class Deployment(_Spec):
    """One model served behind one named endpoint."""

    name: Name
    model: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="a model directory or URI, a job id (its model), or a registry reference"
    )
    resources: Resources = Field(default_factory=Resources)
    replicas: Annotated[int, Field(ge=1, le=1000)] | ReplicaRange = 1
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    traffic: dict[str, Annotated[int, Field(ge=0, le=100)]] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="local provider: the endpoint's stable port"
    )
    host: str | None = Field(
        default=None, description="local provider: bind address (non-loopback needs a token)"
    )
    source_job: str | None = Field(
        default=None, description="lineage: the job that produced the model (set by mlcloud)"
    )
    capture: Capture | None = Field(
        default=None, description="record sampled requests and predictions (off by default)"
    )
    monitor: Monitor | None = Field(
        default=None, description="check drift on a schedule, retrain on drift (needs capture)"
    )
    trust: TrustGrant | None = Field(
        default=None,
        description="set by mlcloud: why the model may run its own code when loaded "
        "(README, Security); the serving container reads it from env "
        f"{modeldir.TRUST_ENV}",
    )

    @model_validator(mode="before")
    @classmethod
    def _trust_in_env(cls, data: Any) -> Any:
        """The grant travels to every provider's serving container in the one variable the
        loader reads; the variable alone, set by hand, grants nothing."""
        if not isinstance(data, dict) or not isinstance(data.get("env") or {}, dict):
            return data
        env = dict(data.get("env") or {})
        trust = data.get("trust")
        if isinstance(trust, dict):
            try:
                trust = TrustGrant.model_validate(trust)
            except ValidationError:
                return data  # the field's own validation reports it
        wanted = trust.env_value if isinstance(trust, TrustGrant) else None
        if modeldir.TRUST_ENV in env and env[modeldir.TRUST_ENV] != wanted:
            raise ValueError(
                f"env.{modeldir.TRUST_ENV} is set by mlcloud from its trust decision; "
                "deploy with --trust-code to trust a model's code"
            )
        if wanted is not None:
            env[modeldir.TRUST_ENV] = wanted
        return {**data, "env": env, "trust": trust}

    @field_validator("host")
    @classmethod
    def _bind_address(cls, v: str | None) -> str | None:
        """A bind address: an IP of this machine's interfaces (or localhost), never a name to
        look up (the server would die of it with a traceback)."""
        if v is None or v == "localhost":
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(
                "must be an IP address to bind, e.g. 127.0.0.1 (this machine only) or 0.0.0.0"
            ) from None

    @field_validator("env")
    @classmethod
    def _serving_env(cls, v: dict[str, str]) -> dict[str, str]:
        """The serving knobs a deployment may set, checked here rather than by the server's
        start-up traceback; other MLCLOUD_* variables are mlcloud's own."""
        for name, value in v.items():
            if not name.startswith("MLCLOUD_") or name == modeldir.TRUST_ENV:
                continue
            check = _SERVING_KNOBS.get(name)
            if check is None:
                raise ValueError(
                    f"{name}: MLCLOUD_* variables are set by mlcloud itself; a deployment may "
                    f"set {', '.join(sorted(_SERVING_KNOBS))}"
                )
            problem = check(value)
            if problem:
                raise ValueError(f"{name}={value!r} {problem}")
        return v

    @field_validator("traffic")
    @classmethod
    def _sums_to_100(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and sum(v.values()) != 100:
            raise ValueError(f"traffic percentages must add up to 100, got {sum(v.values())}")
        return v

    @property
    def min_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.min

    @property
    def max_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.max


def _positive(value: str) -> str | None:
    return None if value.isdigit() and int(value) >= 1 else "must be a whole number, at least 1"


def _positive_number(value: str) -> str | None:
    try:
        ok = float(value) > 0
    except ValueError:
        ok = False
    return None if ok else "must be a number above 0"


def _switch(value: str) -> str | None:
    return None if value in ("0", "1") else "must be 0 or 1"


def _contract(value: str) -> str | None:
    known = ("local", "sagemaker", "vertex", "azureml")
    return None if value in known else f"must be one of {', '.join(known)}"


# What serving/ reads from a deployment's environment (see serving/service.py, front.py).
_SERVING_KNOBS: dict[str, Callable[[str], str | None]] = {
    "MLCLOUD_SERVE_WORKERS": _positive,
    "MLCLOUD_SERVE_MAX_BODY": _positive,
    "MLCLOUD_SERVE_MAX_CONNECTIONS": _positive,
    "MLCLOUD_SERVE_ACCESS_LOG": _switch,
    "MLCLOUD_SERVE_GC_FREEZE": _switch,
    "MLCLOUD_SERVING_CONTRACT": _contract,
    # request capture's tuning (serving/capture.py); ``capture:`` turns it on
    "MLCLOUD_CAPTURE_QUEUE": _positive,
    "MLCLOUD_CAPTURE_ROTATE_MB": _positive_number,
    "MLCLOUD_CAPTURE_ROTATE_S": _positive_number,
}
SpecT = TypeVar("SpecT", bound=BaseModel)
SPEC_KINDS: dict[str, type[BaseModel]] = {"job": TrainingJob, "deployment": Deployment}


def spec_error(err: ValidationError, what: str, flagged: Sequence[str] = ()) -> SpecError:
    """pydantic's errors → one SpecError; each line names the field, bad value, what's allowed.
    ``flagged``: the keys ``--set`` gave; a line about one of them blames the flag, not the file."""
    lines = []
    errors = err.errors(include_url=False)
    locs = [_location(e["loc"]) for e in errors]
    from_flags = [_flag_for(loc, flagged) for loc in locs]
    for e, loc, flag in zip(errors, locs, from_flags, strict=True):
        loc = (flag + loc) if flag else (loc or "(top level)")
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field{_did_you_mean(err, e['loc'])}; "
                         f"{_allowed_fields(err, e['loc'])}")  # fmt: skip
            continue
        if e["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
            continue
        if e["type"] in _WRONG_BRANCH and locs.count(loc) > 1 and isinstance(value, dict):
            continue  # a mapping for `int | {min, max}`: the mapping branch says what is wrong
        if e["loc"][:1] == ("env",) and e["type"] in _ENV_SHAPE:
            lines.append(f"{loc}: must be a value, {{from_env: NAME}} or {{secret: URI}}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" + _got(e["loc"], value))
    # A union (e.g. nodes: int | {min,max}) reports each branch; keep each message once.
    unique = list(dict.fromkeys(lines))
    if from_flags and all(from_flags):
        what = f"--set for {what}"  # the file itself is not what is wrong
    kind = _title_kind(err.title) or "job"
    return SpecError(
        f"invalid {what}:\n  " + "\n  ".join(unique),
        hint=f"fix the field(s) named above; `mlcloud schema {kind}` lists every field",
    )


def _flag_for(loc: str, flagged: Sequence[str]) -> str:
    """``"--set "`` when ``loc`` (or a field above it) was given by a --set flag."""
    hit = any(loc == key or loc.startswith(key + ".") for key in flagged)
    return "--set " if hit else ""


def _did_you_mean(err: ValidationError, loc: tuple[int | str, ...]) -> str:
    import difflib

    allowed = _allowed_fields(err, loc).removeprefix("allowed: ").split(", ")
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
    return f" (did you mean {close[0]}?)" if close else ""


def _is_union_tag(part: object) -> bool:
    # pydantic puts the union branch ("int", "NodeRange", "constrained-str") into the location
    return isinstance(part, str) and (
        part[:1].isupper()
        or part in {"int", "str", "float", "bool", "constrained-str"}
        or part.startswith(("constrained-", "function-"))
    )


def _allowed_fields(err: ValidationError, loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] | None = SPEC_KINDS.get(_title_kind(err.title))
    for part in loc[:-1]:
        if model is None or not isinstance(part, str):
            break
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        model = _first_model(ann)
    if model is None:
        return "see `mlcloud schema` for the allowed fields"
    return "allowed: " + ", ".join(model.model_fields)


def _title_kind(title: str) -> str:
    return {"TrainingJob": "job", "Deployment": "deployment"}.get(title, "")


def _first_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


_WRONG_BRANCH = frozenset({"int_type", "int_parsing", "float_type", "string_type", "bool_type"})
_ENV_SHAPE = frozenset({"string_type", "model_type", "dict_type", "model_attributes_type"})
# Mappings whose keys are the user's names (``env: {API_KEY: ...}``), not union branches.
_NAMED_KEYS = frozenset({"env", "inputs", "hyperparameters", "instance_type", "traffic"})


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not _is_union_tag(p) or (i > 0 and loc[i - 1] in _NAMED_KEYS)
    ]
    return ".".join(parts)


def _got(loc: tuple[int | str, ...], value: object) -> str:
    """`` (got …)``, never showing an environment's values: they may be secrets."""
    if loc and loc[0] == "env":
        if len(loc) < 2:
            return ""
        value = sensitive.redact_value(str(loc[1]), value)
    return f" (got {_short(value)})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_spec(
    model: type[SpecT], data: object, what: str, flagged: Sequence[str] = ()
) -> SpecT:
    """Build ``model`` from plain data, raising only SpecError (``flagged``: see spec_error)."""
    if not isinstance(data, dict):
        raise SpecError(f"invalid {what}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise spec_error(e, what, flagged) from None
    except (ValueError, TypeError, RecursionError) as e:  # defensive: odd values from YAML
        raise SpecError(f"invalid {what}: {e}") from None


def load_job(path: str | Path, overrides: list[str] | None = None) -> TrainingJob:
    """Load ``job.yaml``; relative ``source`` and input paths resolve against the file's dir."""
    from mlcloud.yamlio import apply_overrides, read_yaml

    path = Path(path)
    data = read_yaml(path, what="job file")
    if overrides:
        data = apply_overrides(data, overrides)
    flagged = [item.partition("=")[0].strip() for item in overrides or ()]
    job = validate_spec(TrainingJob, data, f"job file {path}", flagged)
    return resolve_paths(job, path.resolve().parent)


def resolve_paths(job: TrainingJob, base: Path) -> TrainingJob:
    """Make ``source`` and local ``inputs`` absolute against ``base`` (URIs are left alone)."""

    def absolute(p: str) -> str:
        if "://" in p and not p.startswith("file://"):
            return p
        local = Path(p.removeprefix("file://")).expanduser()
        return str(local if local.is_absolute() else (base / local).resolve())

    return job.model_copy(
        update={
            "source": absolute(job.source),
            "inputs": {k: absolute(v) for k, v in job.inputs.items()},
        }
    )


def dump_yaml(spec: BaseModel) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def json_schema(kind: str) -> dict[str, Any]:
    if kind not in SPEC_KINDS:
        raise SpecError(f"unknown schema {kind!r}; allowed: {', '.join(SPEC_KINDS)}")
    return SPEC_KINDS[kind].model_json_schema()


def spec_hash(spec: BaseModel, length: int = 8) -> str:
    """A short, stable hash of a spec's values (used for idempotent native names)."""
    import hashlib
    import json

    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
