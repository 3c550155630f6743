"""Notification: for every InvoiceIssued, POST /notify-user on the User service with a machine token.

Invoices that queue up while a call is in flight go together in one POST /notify-users (at most NOTIFY_BATCH):
one HTTP round trip and one token check for many notifications. Transient failures (connection refused, 5xx, 429)
raise RetryLater, so the events wait uncommitted until the User service is back; the idempotency key (the invoice
id) makes a retried call a single notification.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meshrun import BatchContext, RetryLater, Service, ServiceContext
from meshrun.auth.client_secret import missing_secret, read_secret
from meshrun.auth.token_source import ClientCredentialsTokenSource
from meshrun.errors import SettingsError, TokenRequestFailed
from meshrun.http.server import json_response
from meshrun.service_state import StateKey
from meshrun.services.events import INVOICE_EVENTS, InvoiceIssued
from meshrun.settings import settings_from
from meshrun.tls import cleartext_problem

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
NOTIFY_BATCH = 100  # invoices per POST /notify-users at most; the User service takes up to 500
ASK_AGAIN_AFTER = 300.0  # seconds before a User service that answered 404 to POST /notify-users is asked again


@dataclass(frozen=True)
class NotificationSettings:
    client_id: str = "notification-service"
    client_secret_env: str = "MESHRUN_NOTIFICATION_SECRET"  # the secret's variable: it wins over the file
    client_secret_file: str = ""  # or a file holding it (relative to services.toml), e.g. a mounted secret
    client_secret: str = ""  # plaintext in services.toml: accepted, warned about by `meshrun check` and at start
    scope: str = "users.notify"
    audience: str = "users"
    users_url: str = ""  # default: the `users` service of this services.toml
    token_url: str = ""  # default: <mesh.issuer>/oauth2/token


class NotifyRejected(Exception):
    """The User service refused the notification for a reason a retry will not fix (dead-lettered)."""


_parse = settings_from(NotificationSettings)


def parse_settings(table: dict[str, Any], path: str) -> NotificationSettings:
    """The settings, and a problem naming the variable when the client secret has no source at all."""
    settings = _parse(table, path)
    problem = missing_secret(settings.client_secret_env, settings.client_secret_file, settings.client_secret,
                             f"{path}.client_secret")
    if problem:
        raise SettingsError([problem])
    return settings


service = Service("notification", settings=parse_settings)
TOKENS = StateKey("tokens", ClientCredentialsTokenSource)  # machine tokens for the User service
NOTIFY_URL = StateKey("notify_url", str)
NOTIFY_BATCH_URL = StateKey("notify_batch_url", str)
BATCH_ENDPOINT_FROM = StateKey("batch_endpoint_from", float)  # monotonic time from which POST /notify-users is used
SENT = StateKey("sent", int)  # notifications sent since start


@service.startup
async def create_token_source(ctx: ServiceContext) -> None:
    s: NotificationSettings = ctx.settings
    key = f"services.{ctx.name}.settings.client_secret"
    secret, source = read_secret(s.client_secret_env, s.client_secret_file, s.client_secret, ctx.mesh.base_dir, key)
    if source == "plaintext":
        ctx.log.warning("plaintext_client_secret", key=key, hint="move it to client_secret_env or client_secret_file")
    for name, url in (("token_url", s.token_url), ("users_url", s.users_url)):
        # Both carry credentials (the secret, then bearer tokens): never in cleartext beyond loopback.
        problem = None if not url or ctx.mesh.trust_proxy_tls else cleartext_problem(url, f"settings.{name}")
        if problem:
            raise SettingsError([f"services.{ctx.name}.settings.{name}: {problem}"])
    ctx.state[TOKENS] = ClientCredentialsTokenSource(
        token_url=s.token_url or f"{ctx.issuer}/oauth2/token", client_id=s.client_id, client_secret=secret,
        scope=s.scope, session=lambda: ctx.http, resource=s.audience,
    )
    users_url = (s.users_url or ctx.url_of("users")).rstrip("/")
    ctx.state[NOTIFY_URL] = f"{users_url}/notify-user"
    ctx.state[NOTIFY_BATCH_URL] = f"{users_url}/notify-users"
    ctx.state[BATCH_ENDPOINT_FROM] = 0.0


@service.route("GET", "/stats")
async def stats(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Notifications sent and machine tokens fetched since start (one per token lifetime is the goal)."""
    tokens = ctx.state[TOKENS]
    return json_response({"sent": ctx.state.get(SENT, 0), "tokens_fetched": tokens.fetched})


async def _post(ctx: ServiceContext, url: str, token: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, bytes]:
    try:
        async with ctx.http.post(url, data=body, headers={"Authorization": f"Bearer {token}",
                                                           "Content-Type": "application/json", **headers}) as response:
            return response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"User service unreachable at {url}: {type(exc).__name__}: {exc}") from exc


async def _call_users(ctx: ServiceContext, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST to the User service with a machine token; the status and body of a success (or of a 404).

    Raises RetryLater for what waits (the authorization server or the User service unreachable or failing, the
    token refused) and NotifyRejected for a refusal a retry will not fix."""
    tokens = ctx.state[TOKENS]
    try:
        token = await tokens.token()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"authorization server unreachable: {type(exc).__name__}: {exc}") from exc
    except TokenRequestFailed as exc:
        # Refused (a wrong secret or scope) or failing (5xx): either way the event waits, uncommitted, for the
        # authorization server or its configuration to be fixed, rather than being dead-lettered.
        raise RetryLater(f"no machine token for {tokens.client_id}: {exc}") from exc
    status, answer = await _post(ctx, url, token, body, headers)
    if status == 401:  # the token may have been signed with a key the User service no longer trusts
        tokens.invalidate(token)
        try:
            status, answer = await _post(ctx, url, await tokens.token(), body, headers)
        except (aiohttp.ClientError, TimeoutError, TokenRequestFailed) as exc:
            raise RetryLater(f"no fresh machine token for {tokens.client_id}: {exc}") from exc
    if status in TRANSIENT_STATUS:
        raise RetryLater(f"User service answered {status}")
    if status in (401, 403):
        # A configuration problem (client, scope, audience or keys): wait for the fix rather than drop the event.
        raise RetryLater(f"User service refused the machine token ({status}): check the notification client's "
                         "scope and audience in services.toml")
    if status >= 400 and status != 404:
        raise NotifyRejected(f"User service refused the notification: {status} {answer[:300]!r}")
    return status, answer


def _notification(invoice: InvoiceIssued) -> dict[str, object]:
    return {"invoice_id": invoice.invoice_id, "order_id": invoice.order_id, "user": invoice.customer,
            "total": invoice.total, "currency": invoice.currency, "trace_id": invoice.trace_id}


async def _notify_one(ctx: ServiceContext, invoice: InvoiceIssued) -> bool:
    """POST /notify-user; True if the User service had recorded this invoice already."""
    status, _ = await _call_users(ctx, ctx.state[NOTIFY_URL], orjson.dumps(_notification(invoice)),
                                  {"Idempotency-Key": invoice.invoice_id, "X-Trace-Id": invoice.trace_id})
    if status == 404:
        raise NotifyRejected(f"User service refused the notification of invoice {invoice.invoice_id}: 404")
    return status == 200


async def _notify_many(ctx: ServiceContext, invoices: list[InvoiceIssued]) -> list[bool] | None:
    """POST /notify-users; for each invoice, True if it was recorded already. None if the User service has no such
    endpoint (an older version): it is then not asked again, and notifications go one per request."""
    body = orjson.dumps({"notifications": [_notification(invoice) for invoice in invoices]})
    status, answer = await _call_users(ctx, ctx.state[NOTIFY_BATCH_URL], body, {})
    if status == 404:
        # An older User service, or one being upgraded behind a proxy: ask it again in a while.
        ctx.state[BATCH_ENDPOINT_FROM] = time.monotonic() + ASK_AGAIN_AFTER
        ctx.log.warning("notify_batch_endpoint_missing", url=ctx.state[NOTIFY_BATCH_URL],
                        fallback="one POST /notify-user per invoice", ask_again_in_s=ASK_AGAIN_AFTER)
        return None
    try:
        results = orjson.loads(answer)["results"]
        if [result["invoice_id"] for result in results] != [invoice.invoice_id for invoice in invoices]:
            raise ValueError(f"{len(results)} results that do not name the {len(invoices)} invoices sent, in order")
        if any(result["status"] not in ("notified", "duplicate") for result in results):
            raise ValueError(f"a status other than notified or duplicate: {results!r:.300}")
        return [result["status"] == "duplicate" for result in results]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        # Which were recorded we cannot tell: the batch fails, and each invoice is sent again alone to
        # POST /notify-user, where the idempotency keys keep that to one notification each.
        raise NotifyRejected(f"User service answered POST /notify-users with an unexpected body: {exc!r}") from exc


@service.subscribe(INVOICE_EVENTS, event=InvoiceIssued, batch=NOTIFY_BATCH)
async def notify_users(invoices: list[InvoiceIssued], ctx: BatchContext) -> None:
    service_ctx = ctx.service
    duplicates = None
    if len(invoices) > 1 and time.monotonic() >= service_ctx.state[BATCH_ENDPOINT_FROM]:
        duplicates = await _notify_many(service_ctx, invoices)
    if duplicates is None:
        duplicates = [await _notify_one(service_ctx, invoice) for invoice in invoices]
    service_ctx.state[SENT] = service_ctx.state.get(SENT, 0) + len(invoices)
    for i, (invoice, duplicate) in enumerate(zip(invoices, duplicates, strict=True)):
        ctx.log_for(i).info("notification_sent", invoice_id=invoice.invoice_id, order_id=invoice.order_id,
                            user=invoice.customer, duplicate=duplicate)
