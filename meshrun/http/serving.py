"""Serving one aiohttp application on a host and port: a runner and a TCP site, the port it really got, and a clear
error when the port is taken. Not the application (`meshrun.http.server.create_app`)."""
from __future__ import annotations

import errno
import os

from aiohttp import web

from meshrun.errors import PortInUse


async def serve_app(name: str, app: web.Application, host: str, port: int, *, grace_period: float,
                    key: str | None = None) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns its runner (clean it up to stop) and the bound port (port 0 picks a free one).
    `key` names the services.toml key to change in the PortInUse error."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_period, handle_signals=False)
    await runner.setup()
    # `meshrun up --workers N` starts N processes that share each port; the kernel spreads connections.
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=os.environ.get("MESHRUN_REUSE_PORT") == "1")
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(name, host, port, key) from None
        raise
    addresses = runner.addresses  # (host, port, ...) of each bound socket
    return runner, int(addresses[0][1]) if addresses else port
