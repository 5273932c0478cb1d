"""Container entrypoint: start the service the way this platform's contract expects.

``python -m serving.entrypoint [serve]`` (SageMaker runs the image with ``serve``). Resolves
the contract from the environment, then execs ``bentoml serve`` on the contract's port. Inside a
container the platform connects from outside, so the host defaults to 0.0.0.0 here (and only
here); ``MLCLOUD_SERVE_HOST`` overrides it. Standard-library only until the exec.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from mlcloud.errors import MlcloudError
from serving.contracts import resolve

DEFAULT_PORT = 3000
SERVICE = "serving.service:MlcloudService"


def command(env: Mapping[str, str]) -> list[str]:
    """The ``bentoml serve`` argv for this environment."""
    contract = resolve(env)
    port = contract.port or int(env.get("BENTOML_PORT") or DEFAULT_PORT)
    host = env.get("MLCLOUD_SERVE_HOST", "0.0.0.0")  # noqa: S104 - container: reached from outside
    target = env.get("BENTO_PATH") or SERVICE
    return ["bentoml", "serve", target, "--host", host, "--port", str(port)]


def main(argv: list[str]) -> None:
    args = [a for a in argv if a != "serve"]
    if args:
        sys.exit(f"usage: python -m serving.entrypoint [serve] (got {' '.join(args)})")
    try:
        cmd = command(os.environ)
    except MlcloudError as e:  # a bad environment: one line in the platform's log
        sys.exit(f"mlcloud serving: error: {e}" + (f" (hint: {e.hint})" if e.hint else ""))
    print("mlcloud serving: " + " ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)  # noqa: S606 - fixed argv, the container becomes the server


if __name__ == "__main__":
    main(sys.argv[1:])
