"""The one poll-until loop and the one log-follow loop every provider uses.

Waiting is the retry layer mlcloud owns (DESIGN.md, Retries): the SDKs retry their own calls,
these loops only repeat a read until the far end reaches the state asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from mlcloud.errors import Origin, Transient

T = TypeVar("T")


class _NotYet(Exception):
    pass


def wait_until(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    poll: float,
    what: str,
    origin: Origin,
) -> T:
    """Call ``fetch`` every ``poll`` seconds until ``done(result)``; ``Transient`` (code
    ``WaitTimeout``) after ``timeout``. Errors from ``fetch`` propagate at once."""
    from tenacity import RetryError, retry, retry_if_exception_type, stop_after_delay, wait_fixed

    @retry(
        retry=retry_if_exception_type(_NotYet),
        stop=stop_after_delay(timeout),
        wait=wait_fixed(poll),
        reraise=False,
    )
    def attempt() -> T:
        value = fetch()
        if not done(value):
            raise _NotYet
        return value

    try:
        return attempt()
    except RetryError:
        raise origin.error(
            Transient,
            f"timed out after {timeout:.0f}s waiting for {what}",
            code="WaitTimeout",
            hint="it may still finish: check with mlcloud endpoints / mlcloud jobs",
        ) from None


def follow_logs(
    read_new: Callable[[], Iterable[str]],
    finished: Callable[[], bool],
    *,
    follow: bool,
    poll: float,
) -> Iterator[str]:
    """Yield what ``read_new`` returns (each call: the lines not yet seen). Without ``follow``
    one pass; with it, pass again every ``poll`` seconds until ``finished()``, then one more
    pass, because the last lines often land after the job's state says it ended."""
    done = False
    while True:
        yield from read_new()
        if not follow or done:
            return
        done = finished()
        if not done:
            time.sleep(poll)
