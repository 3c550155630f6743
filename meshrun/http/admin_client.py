"""The client of a running mesh's admin endpoint: the `TransportAdmin` of a transport that lives in-process.

Not the endpoint (`meshrun.http.admin`). `meshrun topics` and `meshrun replay` talk to this exactly as they talk to a
transport that crosses processes (Kafka), so they have one path whatever the transport.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Sequence

import aiohttp

from meshrun.config import MeshConfig
from meshrun.errors import MeshrunError
from meshrun.transport.base import PartitionLag, ResetTarget, TopicInfo, TransportAdmin


class MeshAdminClient(TransportAdmin):
    """Asks the mesh listening on `mesh.admin_port` of `config`."""

    def __init__(self, config: MeshConfig, not_running_hint: str = "") -> None:
        if config.admin_port is None:
            raise MeshrunError(f"{config.file}: mesh.admin_port is not set; the {config.transport} transport lives "
                               "inside `meshrun up` and is reached through that port")
        self.base = f"http://{config.host}:{config.admin_port}"
        self.not_running_hint = not_running_hint

    async def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        url = self.base + path
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.request(method, url, params=params) as response:
                    try:
                        body = await response.json(content_type=None)
                    except ValueError:
                        raise MeshrunError(f"{url} answered {response.status} with a body that is not JSON: is "
                                           "something other than a meshrun mesh listening on mesh.admin_port?"
                                           ) from None
                    if response.status >= 400:
                        raise MeshrunError(str(body.get("message", body)))
                    return body
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise MeshrunError(f"no running mesh answers at {url} ({exc}): the in-memory mesh is not running; start "
                               f"it with `meshrun up`.{self.not_running_hint}") from None

    async def describe(self, topics: Sequence[str] | None = None) -> list[TopicInfo]:
        infos = [topic_info_from_json(t) for t in (await self._call("GET", "/topics"))["topics"]]
        return infos if topics is None else [i for i in infos if i.name in topics]

    async def reset_offsets(self, group: str, topic: str, to: ResetTarget) -> dict[int, int]:
        target = to.isoformat() if isinstance(to, datetime) else to
        result = await self._call("POST", "/replay", {"group": group, "topic": topic, "to": target})
        return {int(p): int(o) for p, o in result["offsets"].items()}

    async def live_members(self, group: str) -> int:
        return int((await self._call("GET", "/members", {"group": group}))["members"])


def topic_info_from_json(data: dict[str, Any]) -> TopicInfo:
    """The inverse of `meshrun.http.admin.topic_infos_to_json` for one topic."""
    groups = {group: [PartitionLag(p["partition"], p["log_start"], p["log_end"], p["committed"]) for p in lags]
              for group, lags in data.get("groups", {}).items()}
    return TopicInfo(data["name"], data["partitions"], groups, records=data.get("records", 0))
