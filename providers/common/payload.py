"""The one way a provider turns a predict payload into the body it sends to ``/predict``."""

from __future__ import annotations

import json
from typing import Any

from mlcloud.errors import SpecError


def predict_body(payload: Any) -> bytes:
    """``{"instances": [...]}`` (or a bare list of instances, wrapped) as JSON bytes; a payload
    that is not JSON is the caller's error, found before anything is sent."""
    body = payload if isinstance(payload, dict) else {"instances": payload}
    try:
        return json.dumps(body).encode()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"the payload is not JSON-serialisable: {exc}") from None
