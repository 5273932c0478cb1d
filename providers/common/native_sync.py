"""Mirror mlcloud's aliases onto a cloud's model registry without overwriting changes made there.

A provider describes the alias-derived part of a native entry as a flat *state*, field → value
(SageMaker: ``{"approval status": "Approved", "tag mlcloud:alias:staging": "3"}``). Next to the
entry mlcloud keeps the fingerprint of the state it last left there (a metadata property, label
or tag). A live state whose fingerprint differs was changed outside mlcloud: it is reported as
drift and left as it is, so an edit made in the cloud's console is never silently undone.

Pure functions only; the providers' ``model_registry.py`` modules read and write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

State = Mapping[str, str]


def fingerprint(state: State) -> str:
    """16 hex over the state: what mlcloud writes beside the entry after each sync."""
    return hashlib.sha256(json.dumps(sorted(state.items())).encode()).hexdigest()[:16]


def differences(live: State, expected: State, where: str) -> list[str]:
    """One line per field whose live value is not what mlcloud expects."""
    lines = []
    for field in sorted(set(live) | set(expected)):
        have, want = live.get(field), expected.get(field)
        if have != want:
            lines.append(
                f"{field}: {where} has {_shown(have)}, mlcloud's registry says {_shown(want)}"
            )
    return lines


def drift(live: State, marker: str | None, expected: State, where: str) -> list[str]:
    """The differences, and whether they were made outside mlcloud (the live state is not the
    one mlcloud last left) or are an alias move mlcloud has not applied yet."""
    lines = differences(live, expected, where)
    if lines and marker != fingerprint(live):
        lines.append(f"changed outside mlcloud since its last sync ({where})")
    elif lines:
        lines.append("not applied yet: the next alias move on this model applies it")
    return lines


@dataclass(frozen=True)
class Decision:
    write: bool  # send ``expected`` (and its fingerprint) to the entry
    left: list[str]  # the drift left untouched instead (empty when ``write`` or in step)


def decide(live: State, marker: str | None, expected: State, where: str) -> Decision:
    """Write when the entry is as mlcloud left it (or only the fingerprint lags); leave it and
    report it when someone else changed it since."""
    if dict(live) == dict(expected):
        return Decision(write=marker != fingerprint(expected), left=[])
    if marker == fingerprint(live):
        return Decision(write=True, left=[])
    return Decision(write=False, left=drift(live, marker, expected, where))


def _shown(value: str | None) -> str:
    return "nothing" if value is None else repr(value)
