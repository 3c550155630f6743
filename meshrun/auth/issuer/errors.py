"""OAuth2 error responses (RFC 6749 §5.2, RFC 7009, RFC 7662, RFC 8707) as one exception type.

Every failure a client can cause at the token, introspection or revocation endpoint is an OAuthError; it becomes
a JSON body with `error` and `error_description`, never an HTML page or a traceback.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from meshrun.errors import AuthError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(AuthError):
    """An RFC 6749 error: `error` is the registered code, `description` says what to change."""

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
                 ) -> None:
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
        super().__init__(f"{error}: {description}")

    def response(self) -> web.Response:
        return web.Response(body=orjson.dumps({"error": self.error, "error_description": self.description}),
                            status=self.status, content_type="application/json", headers={**NO_STORE, **self.headers})


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client(description: str) -> OAuthError:
    # RFC 6749 §5.2: 401 with a challenge for the scheme clients may use (client_secret_basic).
    return OAuthError("invalid_client", description, 401,
                      {"WWW-Authenticate": 'Basic realm="meshrun", charset="UTF-8"'})


def invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def invalid_scope(description: str) -> OAuthError:
    return OAuthError("invalid_scope", description)


def invalid_target(description: str) -> OAuthError:
    """RFC 8707 §2: a `resource` the client may not get tokens for."""
    return OAuthError("invalid_target", description)


def unauthorized_client(description: str) -> OAuthError:
    return OAuthError("unauthorized_client", description)


def unsupported_grant_type(description: str) -> OAuthError:
    return OAuthError("unsupported_grant_type", description)
