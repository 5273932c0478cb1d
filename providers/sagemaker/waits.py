"""Polling waits (tenacity): the only retries mlcloud adds on top of botocore's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from mlcloud.errors import Transient

T = TypeVar("T")


class _NotYet(Exception):
    pass


def wait_until(
    fetch: Callable[[], T], done: Callable[[T], bool], *, timeout: float, poll: float, what: str
) -> T:
    """Call ``fetch`` every ``poll`` seconds until ``done(result)``; Transient after ``timeout``."""
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
        raise Transient(
            f"timed out after {timeout:.0f}s waiting for {what}",
            provider="sagemaker",
            code="WaitTimeout",
            hint="it may still finish: check with mlcloud endpoints / mlcloud jobs",
        ) from None
