"""Notification: for every InvoiceIssued, POST /notify-user on the User service with a machine token.

Transient failures (connection refused, 5xx, 429) raise RetryLater, so the event waits uncommitted until the
User service is back; the Idempotency-Key (the invoice id) makes a retried call a single notification.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from meshrun import EventContext, RetryLater, Service, ServiceContext
from meshrun.auth.token_source import ClientCredentialsTokenSource
from meshrun.errors import TokenRequestFailed
from meshrun.http.server import json_response
from meshrun.services.events import INVOICE_EVENTS, InvoiceIssued
from meshrun.settings import settings_from

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class NotificationSettings:
    client_id: str = "notification-service"
    client_secret: str = ""
    client_secret_env: str = "MESHRUN_NOTIFICATION_SECRET"  # the environment wins over client_secret
    scope: str = "users.notify"
    audience: str = "users"
    users_url: str = ""  # default: the `users` service of this services.toml
    token_url: str = ""  # default: <mesh.issuer>/oauth2/token


class NotifyRejected(Exception):
    """The User service refused the notification for a reason a retry will not fix (dead-lettered)."""


service = Service("notification", settings=settings_from(NotificationSettings))


@service.startup
async def create_token_source(ctx: ServiceContext) -> None:
    s: NotificationSettings = ctx.settings
    secret = os.environ.get(s.client_secret_env) or s.client_secret
    ctx.state["tokens"] = ClientCredentialsTokenSource(
        token_url=s.token_url or f"{ctx.issuer}/oauth2/token", client_id=s.client_id, client_secret=secret,
        scope=s.scope, session=lambda: ctx.http, resource=s.audience,
    )
    ctx.state["notify_url"] = f"{(s.users_url or ctx.url_of('users')).rstrip('/')}/notify-user"


@service.route("GET", "/stats")
async def stats(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Notifications sent and machine tokens fetched since start (one per token lifetime is the goal)."""
    tokens: ClientCredentialsTokenSource = ctx.state["tokens"]
    return json_response({"sent": ctx.state.get("sent", 0), "tokens_fetched": tokens.fetched})


async def _post(ctx: ServiceContext, url: str, token: str, body: bytes, invoice: InvoiceIssued) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Idempotency-Key": invoice.invoice_id, "X-Trace-Id": invoice.trace_id}
    try:
        async with ctx.http.post(url, data=body, headers=headers) as response:
            if response.status >= 400:
                await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"User service unreachable at {url}: {type(exc).__name__}: {exc}") from exc


@service.subscribe(INVOICE_EVENTS, event=InvoiceIssued)
async def notify_user(invoice: InvoiceIssued, ctx: EventContext) -> None:
    tokens: ClientCredentialsTokenSource = ctx.service.state["tokens"]
    url: str = ctx.service.state["notify_url"]
    body = orjson.dumps({"invoice_id": invoice.invoice_id, "order_id": invoice.order_id, "user": invoice.customer,
                         "total": invoice.total, "currency": invoice.currency, "trace_id": invoice.trace_id})
    try:
        token = await tokens.token()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"authorization server unreachable: {type(exc).__name__}: {exc}") from exc
    except TokenRequestFailed as exc:
        # Refused (a wrong secret or scope) or failing (5xx): either way the event waits, uncommitted, for the
        # authorization server or its configuration to be fixed, rather than being dead-lettered.
        raise RetryLater(f"no machine token for {tokens.client_id}: {exc}") from exc
    status = await _post(ctx.service, url, token, body, invoice)
    if status == 401:  # the token may have been signed with a key the User service no longer trusts
        tokens.invalidate(token)
        try:
            status = await _post(ctx.service, url, await tokens.token(), body, invoice)
        except (aiohttp.ClientError, TimeoutError, TokenRequestFailed) as exc:
            raise RetryLater(f"no fresh machine token for {tokens.client_id}: {exc}") from exc
    if status in TRANSIENT_STATUS:
        raise RetryLater(f"User service answered {status}")
    if status in (401, 403):
        # A configuration problem (client, scope, audience or keys): wait for the fix rather than drop the event.
        raise RetryLater(f"User service refused the machine token ({status}): check the notification client's "
                         "scope and audience in services.toml")
    if status >= 400:
        raise NotifyRejected(f"User service refused the notification of invoice {invoice.invoice_id}: {status}")
    ctx.service.state["sent"] = ctx.service.state.get("sent", 0) + 1
    ctx.log.info("notification_sent", invoice_id=invoice.invoice_id, order_id=invoice.order_id,
                 user=invoice.customer, duplicate=status == 200)
