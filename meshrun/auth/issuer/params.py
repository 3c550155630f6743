"""The parameters of an OAuth2 request: a form body or a query string, each parameter at most once (RFC 6749 §3.1).

Parsing only; what the parameters mean is decided by the grants and the authorization endpoint.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl

from meshrun.auth.issuer.errors import invalid_request

FORM = "application/x-www-form-urlencoded"
# RFC 8707 §2: `resource` may be repeated to ask for several audiences; every other parameter may not.
REPEATABLE = frozenset({"resource"})
MAX_PARAMETERS = 64


class Params:
    """Request parameters: `get` returns the single value (or None); empty values count as absent (RFC 6749 §3.1)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if value == "":
                continue
            values = self._values.setdefault(name, [])
            if values and name not in REPEATABLE:
                raise invalid_request(f"parameter {name!r} is given more than once")
            values.append(value)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Params:
        return cls(values.items())

    def get(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def getall(self, name: str) -> list[str]:
        return list(self._values.get(name, ()))

    def require(self, name: str, why: str = "") -> str:
        value = self.get(name)
        if value is None:
            raise invalid_request(f"parameter {name!r} is missing{why}")
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._values


def parse_query(query: str) -> Params:
    return Params(_pairs(query))


def parse_form(content_type: str, body: bytes) -> Params:
    """A token/introspection/revocation request body; anything but a UTF-8 urlencoded form is invalid_request."""
    if content_type != FORM:
        raise invalid_request(f"send the parameters as {FORM} (got {content_type or 'no content type'})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_request("the request body is not UTF-8") from None
    return Params(_pairs(text))


def _pairs(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMETERS, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise invalid_request(f"malformed parameters (at most {MAX_PARAMETERS}, urlencoded UTF-8)") from None
