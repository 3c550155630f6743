"""The mesh's admin endpoint (mesh.admin_port, loopback by default): topics, lag and replay of this process.

It is how `meshrun topics` and `meshrun replay` reach the in-memory transport, which lives inside `meshrun up`.
Bind it to a private interface only: it can rewind consumer groups.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshrun.errors import MeshrunError
from meshrun.http.server import json_error, json_errors, json_response
from meshrun.transport.base import parse_reset_target

if TYPE_CHECKING:
    from meshrun.runtime import Mesh
    from meshrun.transport.base import TopicInfo


def topic_infos_to_json(infos: list["TopicInfo"]) -> list[dict[str, Any]]:
    """The one JSON shape of `describe()`, served by this endpoint and printed by `meshrun topics --json`."""
    return [{"name": i.name, "partitions": i.partitions, "records": i.records,
             "groups": {g: [dict(asdict(p), lag=p.lag) for p in lags] for g, lags in i.groups.items()}}
            for i in infos]


def create_admin_app(mesh: "Mesh") -> web.Application:
    app = web.Application(middlewares=[json_errors])

    async def topics(_: web.Request) -> web.Response:
        return json_response({"transport": mesh.transport.name,
                              "topics": topic_infos_to_json(await mesh.transport.describe())})

    async def replay(request: web.Request) -> web.Response:
        query = request.query
        group, topic, target = query.get("group"), query.get("topic"), query.get("to", "")
        if not group or not topic:
            return json_error(400, "invalid_request", "group and topic are required query parameters")
        try:
            to = parse_reset_target(target)
        except ValueError as exc:
            return json_error(400, "invalid_request", f"to: {exc}")
        try:
            offsets = await mesh.replay(group, topic, to)
        except MeshrunError as exc:
            return json_error(409, "replay_refused", str(exc))
        return json_response({"group": group, "topic": topic, "offsets": {str(p): o for p, o in offsets.items()}})

    async def members(request: web.Request) -> web.Response:
        group = request.query.get("group")
        if not group:
            return json_error(400, "invalid_request", "group is a required query parameter")
        return json_response({"group": group, "members": await mesh.transport.live_members(group)})

    app.router.add_get("/topics", topics)
    app.router.add_get("/members", members)
    app.router.add_post("/replay", replay)
    return app
