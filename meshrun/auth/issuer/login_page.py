"""The plain HTML of the authorization endpoint: the login form, and the page for requests that cannot be
redirected back (unknown client, unregistered redirect URI). Rendering only, every value escaped.
"""
from __future__ import annotations

from html import escape

# The page may not be framed (clickjacking) nor cached; it loads nothing from anywhere.
HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}"
          "label,input,button{display:block;width:100%;margin:.4rem 0;font-size:1rem}"
          "input{padding:.4rem}.error{color:#b00020}")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>")


CSRF_FIELD = "csrf_token"


def in_words(seconds: int) -> str:
    """A wait as people say it: "45 seconds", "3 minutes"."""
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes"


def login_form(action: str, hidden: list[tuple[str, str]], client_id: str, scopes: list[str], csrf_token: str,
               error: str | None = None, username: str = "") -> str:
    fields = "".join(f'<input type="hidden" name="{escape(n)}" value="{escape(v)}">'
                     for n, v in [*hidden, (CSRF_FIELD, csrf_token)])
    asked = ", ".join(escape(s) for s in scopes) or "no particular permission"
    problem = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("Sign in", (
        f"<h1>Sign in</h1><p><b>{escape(client_id)}</b> asks to act for you: {asked}.</p>{problem}"
        f'<form method="post" action="{escape(action)}">{fields}'
        f'<label for="username">Username</label>'
        f'<input id="username" name="username" autocomplete="username" required autofocus '
        f'value="{escape(username)}">'
        f'<label for="password">Password</label>'
        f'<input id="password" name="password" type="password" autocomplete="current-password" required>'
        f"<button type=\"submit\">Sign in</button></form>"))


def error_page(description: str) -> str:
    return _page("Sign-in request refused", (
        f"<h1>This sign-in request cannot be completed</h1><p>{escape(description)}</p>"
        "<p>The application that sent you here is misconfigured; nothing was sent back to it.</p>"))
