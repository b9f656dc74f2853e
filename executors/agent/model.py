"""The model: the Messages API through the anthropic SDK, every HTTP attempt observed.

The SDK retries 408/409/429/5xx itself (``max_retries``), honouring ``retry-after-ms`` and
``retry-after``. A middleware sees every attempt, so each response that came back with a body is
reported (status, body) before the SDK parses it: a reply that fails validation is still billed,
and an error answer (429, 529), which Anthropic does not bill, is recorded with no usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anthropic
from anthropic import Middleware

from codeworker.executors.base import RetryLater

REQUEST_TIMEOUT = 300.0
"""Seconds one Messages request may take (non-streaming replies of ``model_max_tokens``)."""

DEFAULT_RETRY_AFTER = 30.0
"""Seconds to come back after when an overloaded API did not say."""


class ModelError(RuntimeError):
    """The model API failed in a way retrying the job will not fix (a bad request, a bad key)."""


class InvalidReply(ModelError):
    """The API answered 200 with a body the SDK's strict validation refused (billed anyway)."""


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of one model call, as the middleware saw it."""

    retries_taken: int
    status: int
    body: Any
    """The parsed JSON body, or None when it was not JSON."""
    retry_after_ms: float | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The billed usage of this attempt: only a successful answer carries (and bills) one."""
        if (
            200 <= self.status < 300
            and isinstance(self.body, dict)
            and isinstance(self.body.get("usage"), dict)
        ):
            return self.body["usage"]
        return None


AttemptSink = Callable[[Attempt], None]


class Model(Protocol):
    """Answers one Messages request (a dict of the API's parameters) with the message as a dict."""

    def send(self, request: dict[str, Any]) -> dict[str, Any]: ...


class _Observer(Middleware):
    def __init__(self, sink: AttemptSink) -> None:
        self.sink = sink

    def handle(self, request: Any, call_next: Any) -> Any:
        response = call_next(request)
        http = response.http_response
        try:
            body = json.loads(http.read())
        except ValueError:
            body = None
        retry_after = _retry_after_seconds(http.headers)
        self.sink(
            Attempt(
                retries_taken=request.retries_taken,
                status=http.status_code,
                body=body,
                retry_after_ms=None if retry_after is None else retry_after * 1000,
            )
        )
        return response


def _retry_after_seconds(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
    return None


class AnthropicModel:
    """The Messages API. ``ANTHROPIC_BASE_URL`` (read by the SDK) points it at a stand-in or replay."""

    def __init__(
        self, api_key: str, on_attempt: AttemptSink, max_retries: int = 2, timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.client = anthropic.Anthropic(
            api_key=api_key or None,
            max_retries=max_retries,
            timeout=anthropic.Timeout(timeout, connect=10.0),
            middleware=[_Observer(on_attempt)],
            _strict_response_validation=True,
        )

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            message = self.client.messages.create(**request)
        except (anthropic.RateLimitError, anthropic.InternalServerError) as exc:
            retry_after = _retry_after_seconds(exc.response.headers) or DEFAULT_RETRY_AFTER
            kind = "overloaded" if exc.status_code == 529 else f"answering {exc.status_code}"
            raise RetryLater(f"model API {kind} after the SDK's retries", retry_after) from exc
        except anthropic.APIConnectionError as exc:  # includes APITimeoutError
            raise RetryLater(
                f"model API unreachable after the SDK's retries: {exc}", DEFAULT_RETRY_AFTER
            ) from exc
        except anthropic.APIResponseValidationError as exc:
            raise InvalidReply(f"the model API's reply failed validation: {exc.message}") from exc
        except anthropic.APIStatusError as exc:
            raise ModelError(f"model API refused the request ({exc.status_code}): {exc.message}") from exc
        return message.model_dump(mode="json", exclude_none=True)
