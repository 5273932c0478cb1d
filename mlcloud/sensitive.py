"""What must not leak: secret values in environments, the CLI's credentials, private state files.

* **Secret references** in a job's ``env``: ``{from_env: NAME}`` (the submitter's variable, read
  when the job is submitted and handed to the job's processes through their environment, never
  written to disk) and ``{secret: URI}`` (a cloud secret store, read by the job itself).
* **Redaction**: the value of every variable whose name looks secret (``DB_PASSWORD``,
  ``API_KEY``, ``HF_TOKEN``...) and the password of a URL (``postgres://u:PASS@h``) are replaced by
  :data:`REDACTED` wherever mlcloud prints or stores an environment: the state store, plans
  printed by ``--dry-run``, ``--output json``, the local supervisor's files.
* **Scrubbing**: processes that need no cloud access (local model servers) do not inherit the
  CLI's cloud credentials or any secret-looking variable.
* **Private files**: ``$MLCLOUD_HOME`` is 0700 and its files 0600; a home readable by others is
  tightened, with a warning.

Standard library only: the job supervisor and the store import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO

REDACTED = "<redacted>"
#: a local job's variable that carries a literal secret value from the submitter to the
#: supervisor, through the supervisor's environment (never its spec file): ``<prefix><NAME>``
HIDDEN_PREFIX = "MLCLOUD_SECRET_VALUE_"
#: the variable a cloud job's launcher resolves from the cloud's secret store: ``<prefix><NAME>``
#: holds the reference (an ARN, a Secret Manager version, a Key Vault URI), never the value
SECRET_REF_PREFIX = "MLCLOUD_SECRETREF_"  # noqa: S105 (a variable name, not a password)

# Words (split on "_" and "-") that make a variable name secret-looking. "TOKENIZERS_PARALLELISM"
# is not one ("TOKENIZERS" is not "TOKEN"), "PWD" neither (the working directory).
_SECRET_WORDS = frozenset(
    {
        "PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "SECRETS", "TOKEN", "TOKENS", "KEY",
        "KEYS", "APIKEY", "ACCESSKEY", "CREDENTIAL", "CREDENTIALS", "CREDS", "AUTH", "SAS",
        "COOKIE", "DSN",
    }
)  # fmt: skip
_SECRET_PHRASES = ("CONNECTION_STRING", "CONNECTIONSTRING", "PRIVATE_KEY")
# The CLI's cloud credentials and where they point: a local model server needs none of them.
_CREDENTIAL_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "ARM_", "MSI_")
_CREDENTIAL_NAMES = frozenset(
    {"MLCLOUD_API_TOKEN", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "KUBECONFIG", "NETRC"}
)
# The lookbehind starts a scheme only where a word starts: linear, not quadratic, in the value's
# length (a 120 KB hyperparameters value took 46 s without it).
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)"
)
# Keys under which plans, records and supervisor files keep an environment.
_ENV_KEYS = frozenset(
    {"env", "env_vars", "Environment", "environment_variables", "environmentVariables"}
)  # env_vars: a Ray runtime_env


def looks_secret(name: str) -> bool:
    """Whether a variable called ``name`` probably holds a secret."""
    upper = name.upper()
    if any(phrase in upper for phrase in _SECRET_PHRASES):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"[_\-.]", upper))


def redact_value(name: str, value: Any) -> Any:
    """``value`` as it may be shown: :data:`REDACTED` for a secret-looking ``name``, a URL's
    password masked otherwise. References (``{from_env: ...}``) are not values: kept."""
    if not isinstance(value, str):
        return value
    if looks_secret(name) and value:
        return REDACTED
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", value)


def redact_env(env: Mapping[str, Any], secret: Collection[str] = ()) -> dict[str, Any]:
    """``env`` as it may be shown; the names in ``secret`` (e.g. a job's ``{from_env}``
    variables, whatever they are called) are redacted too."""
    return {k: REDACTED if k in secret and v else redact_value(k, v) for k, v in env.items()}


def redact(tree: Any) -> Any:
    """A copy of a JSON-like ``tree`` (a plan, a record, a spec) with every environment in it
    redacted: mappings under ``env`` / ``Environment`` / ``environment_variables`` and Vertex's
    ``[{"name": ..., "value": ...}]`` lists. Nothing else is touched (an S3 ``Key`` is none)."""
    if isinstance(tree, Mapping):
        out: dict[Any, Any] = {}
        for key, value in tree.items():
            if key in _ENV_KEYS and isinstance(value, Mapping):
                out[key] = redact_env(value)
            elif key in _ENV_KEYS and isinstance(value, list):
                out[key] = [_redact_pair(item) for item in value]
            else:
                out[key] = redact(value)
        return out
    if isinstance(tree, (list, tuple)):
        return [redact(item) for item in tree]
    return tree


def _redact_pair(item: Any) -> Any:
    if isinstance(item, Mapping) and isinstance(item.get("name"), str) and "value" in item:
        return {**item, "value": redact_value(item["name"], item["value"])}
    return redact(item)


def scrubbed_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without cloud credentials, mlcloud's API token and secret-looking variables:
    what a process that needs none of them (a local model server) inherits."""
    return {
        k: v
        for k, v in environ.items()
        if not (
            k.startswith(_CREDENTIAL_PREFIXES)
            or k in _CREDENTIAL_NAMES
            or k.startswith(HIDDEN_PREFIX)
            or looks_secret(k)
        )
    }


# ---- a local job's environment: values, references, hidden values ---------------------------
class MissingSecret(LookupError):
    """A ``{from_env: NAME}`` reference whose variable is not set."""


def split_env(env: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """A job's ``env`` (JSON form) for a local process: ``(env, env_from, hidden)``.

    ``env`` holds the plain values that may be written down; ``env_from`` maps a variable of the
    process to the variable of the supervisor's environment it is copied from (a
    ``{from_env: NAME}`` reference, or a literal secret-looking value moved out of the files);
    ``hidden`` holds those moved values, for the supervisor's environment only.
    Raises ``ValueError`` for a ``{secret: URI}`` reference (a cloud store)."""
    plain: dict[str, str] = {}
    env_from: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for name, value in env.items():
        if isinstance(value, Mapping) and "from_env" in value:
            env_from[name] = str(value["from_env"])
        elif isinstance(value, Mapping):
            raise ValueError(f"env.{name}: {dict(value)} is a cloud secret store reference")
        elif looks_secret(name) and value:
            env_from[name] = HIDDEN_PREFIX + name
            hidden[HIDDEN_PREFIX + name] = str(value)
        else:
            plain[name] = str(value)
    return plain, env_from, hidden


def resolve_env_from(env_from: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The values of ``env_from`` (see :func:`split_env`) read from ``environ``;
    ``MissingSecret`` names every variable that is not set."""
    missing = sorted(
        # a hidden value lives only in the environment of the supervisor started with the job
        f"{name} (its value was given at submit)" if src.startswith(HIDDEN_PREFIX) else src
        for name, src in env_from.items()
        if src not in environ
    )
    if missing:
        raise MissingSecret(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set in the "
            "environment (a {from_env: NAME} reference is read when the job is submitted)"
        )
    return {name: environ[src] for name, src in env_from.items()}


def process_env(
    environ: Mapping[str, str], env: Mapping[str, str], env_from: Mapping[str, str]
) -> dict[str, str]:
    """The whole environment of a local job process: the supervisor's ``environ`` (less the
    hidden values it carries), the plan's ``env``, and ``env_from`` resolved from ``environ``."""
    resolved = resolve_env_from(env_from, environ)
    inherited = {k: v for k, v in environ.items() if not k.startswith(HIDDEN_PREFIX)}
    return {**inherited, **env, **resolved}


# ---- a cloud job's environment: values and secret store references --------------------------
def cloud_env(
    env: Mapping[str, Any],
    *,
    where: str,
    store: str,
    example: str,
    accept: Callable[[str], str | None],
) -> dict[str, str]:
    """A cloud job's ``env`` (JSON form) as the variables its container gets: plain values as
    they are, each ``{secret: URI}`` as ``MLCLOUD_SECRETREF_<NAME>=URI`` (the reference only:
    mlcloud's launcher reads the secret with the job's own identity before the user's command
    starts, so no value is in the request, the plan or our store).

    ``accept`` returns the URI normalised, or ``None`` when ``store`` (e.g. "AWS Secrets
    Manager or SSM") would not know it. ``{from_env: NAME}`` is refused: the value would travel
    in plain text in the job's description at the cloud."""
    from mlcloud.errors import SpecError, UnsupportedFeature

    out: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(value, Mapping):
            out[name] = str(value)
        elif "from_env" in value:
            raise UnsupportedFeature(
                f"env.{name}: {{from_env: {value['from_env']}}} (the value would be stored "
                "in plain text in the job's description)",
                where,
                hint=f"put it in {store} and use {{secret: {example}}}",
            )
        else:
            uri = accept(str(value.get("secret", "")))
            if uri is None:
                raise SpecError(
                    f"env.{name}: {value.get('secret')!r} is not a secret {where} can read",
                    hint=f"use a reference to {store}, e.g. {{secret: {example}}}",
                )
            out[SECRET_REF_PREFIX + name] = uri
    return out


# ---- private files ---------------------------------------------------------------------------
def private_home(home: Path) -> str | None:
    """Create ``home`` 0700, or tighten an existing one that others can read or enter.
    Returns the warning to show when it was tightened (``None`` otherwise)."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:  # a file there, a read-only parent: one clear line, not a traceback
        from mlcloud.errors import ConfigError

        raise ConfigError(
            f"cannot use {home} as mlcloud's home: {e.strerror or e}",
            hint="set MLCLOUD_HOME to a directory you own (default ~/.mlcloud)",
        ) from None
    try:
        mode = stat.S_IMODE(home.stat().st_mode)
        if mode & 0o077 and _owned(home):
            os.chmod(home, 0o700)
            return (
                f"{home} was readable by other users (mode {mode:04o}): it holds job specs, "
                "logs and tokens, so mlcloud set it to 0700"
            )
    except OSError:
        return None
    return None


def _owned(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def secure_home(home: Path) -> None:
    """:func:`private_home`, warning on standard error (once per process and home)."""
    key = str(home)
    if key in _WARNED:
        return
    _WARNED.add(key)
    message = private_home(home)
    if message:
        sys.stderr.write(f"warning: {message}\n")


_WARNED: set[str] = set()


def private_file(path: Path) -> None:
    """Make ``path`` 0600 if it exists and others may read it (files created before)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
    except OSError:
        pass


def private_database(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it gives its -wal and -shm files the
    database's mode), or tighten it and them; the home too (:func:`secure_home`)."""
    secure_home(path.parent)
    # O_EXCL: never open (and close) an existing database, since closing any descriptor of it
    # drops every POSIX lock this process's SQLite connections hold on it ("disk I/O error").
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        private_file(path.with_name(path.name + suffix))


def open_append(path: str | Path) -> BinaryIO:
    """``open(path, "ab")``, creating the file 0600 (a log, a record of launched processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab", buffering=0)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new or existing ``path`` that only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    private_file(path)  # an existing file keeps its mode through O_CREAT
