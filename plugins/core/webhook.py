"""`io.kestra.plugin.core.trigger.Webhook`: start a flow from an HTTP call to its own URL.

The trigger holds only what the flow says; the API serves it
(`GET|POST|PUT /api/v1/executions/webhook/{namespace}/{flowId}/{key}`, api/webhooks.py): it
finds the flow's webhook whose rendered `key` is the one in the URL, records the request as the
trigger's variables (`trigger.body`, `trigger.headers`, `trigger.parameters`), checks the
conditions, and starts the flow's latest revision.
"""

from __future__ import annotations

from typing import Any

from engine.plugin import Trigger, register_trigger
from plugins.core.schedule import SCHEDULE_CONDITIONS

MAX_KEY_LENGTH = 256
"""Kestra's limit on a webhook key."""
RESPONSE_CONTENT_TYPES = ("application/json", "text/plain")
"""What `responseContentType` may ask for (Kestra's choices)."""


@register_trigger(
    "io.kestra.plugin.core.trigger.Webhook", "io.kestra.core.models.triggers.types.Webhook"
)
class Webhook(Trigger, kw_only=True):
    """Start the flow when its webhook URL is called.

    The URL is `/api/v1/executions/webhook/{namespace}/{flowId}/{key}` and accepts GET, POST and
    PUT without credentials: the key is the only secret, so make it long and random (or read it
    with `{{ secret('...') }}`). The request is available to the flow as `{{ trigger.body }}`
    (parsed when it is JSON, else text), `{{ trigger.headers }}` and `{{ trigger.parameters }}`
    (each name maps to a list of values). The call answers 404 when no enabled webhook of the
    flow has that key, 204 when the conditions do not hold, and else the execution (or, with
    `wait` and `returnOutputs`, the flow's outputs)."""

    key: str | int
    """The secret part of the URL (at most 256 characters; templates such as
    `{{ secret('WEBHOOK_KEY') }}` or `{{ flow.id }}` are rendered)."""
    wait: bool = False
    """Answer once the execution has ended, instead of as soon as it is created."""
    returnOutputs: bool = False
    """With `wait`, answer with the flow's outputs instead of the execution."""
    inputs: dict[str, Any] = {}
    """Inputs of the executions the webhook starts (templates see `trigger.*`)."""
    responseContentType: str | None = None
    """With `wait` and `returnOutputs`: `text/plain` answers the outputs as text (a single
    string output as it is), `application/json` (the default) as JSON."""
    responseCode: int | str | None = None
    """With `wait`: the status of the answer (a template may decide); by default 200, or 500
    when the execution failed."""

    def condition_types(self) -> frozenset[str] | None:
        # Those that need no ended execution; Kestra refuses MultipleCondition on a webhook.
        return SCHEDULE_CONDITIONS

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        key = str(self.key)
        if not key.strip():
            found.append(("key", "The webhook key is empty: set a long random key"))
        elif len(key) > MAX_KEY_LENGTH:
            found.append(
                ("key", f"The webhook key holds {len(key)} characters; at most {MAX_KEY_LENGTH}")
            )
        elif "/" in key and "{{" not in key:
            found.append(("key", "The webhook key cannot hold '/': it is one segment of a URL"))
        if (
            self.responseContentType is not None
            and self.responseContentType not in RESPONSE_CONTENT_TYPES
        ):
            found.append(
                (
                    "responseContentType",
                    f"responseContentType must be one of {', '.join(RESPONSE_CONTENT_TYPES)}, "
                    f"not {self.responseContentType!r}",
                )
            )
        if isinstance(self.responseCode, int) and not 100 <= self.responseCode <= 599:
            found.append(
                ("responseCode", f"responseCode {self.responseCode} is not an HTTP status")
            )
        return found
