"""`meshrun up` as a user runs it: one process, JSON logs, and one trace_id that follows an order everywhere."""
from __future__ import annotations

import aiohttp

from tests.conftest import pipeline_data, write_toml
from tests.e2e.helpers import eventually, get_json, post_order, user_token
from tests.e2e.processes import MeshProcess

TRAIL = {
    "orders": "order_accepted", "inventory": "inventory_reserved", "email": "order_confirmation_email",
    "analytics": "order_counted", "billing": "invoice_issued", "notification": "notification_sent",
    "users": "user_notified",
}


async def test_one_grep_of_the_trace_id_follows_an_order_through_every_service(tmp_path, ports):
    config = write_toml(tmp_path / "services.toml", pipeline_data(tmp_path, ports))
    mesh = MeshProcess(config, ",".join(["auth", *TRAIL]), tmp_path, name="mesh").start()
    try:
        await mesh.wait_ready(30)
        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        async with aiohttp.ClientSession() as http:
            answers = [await post_order(http, f"http://127.0.0.1:{ports['orders']}", f"t-{i}", token)
                       for i in range(3)]
            assert [status for status, _ in answers] == [202] * 3
            traces = {answer["order_id"]: answer["trace_id"] for _, answer in answers}

            async def trails_complete() -> bool:
                events = mesh.events()
                return all({e["service"] for e in events if e.get("trace_id") == trace} >= set(TRAIL)
                           for trace in traces.values())

            await eventually(trails_complete, what="every service to log every order's trace_id")
            listing = await get_json(http, f"http://127.0.0.1:{ports['users']}/notifications")
            assert listing["count"] == 3
    finally:
        assert mesh.stop() == 0
    events = mesh.events()
    for order_id, trace in traces.items():
        trail = {e["service"]: e for e in events if e.get("trace_id") == trace}
        assert {service: trail[service]["event"] for service in TRAIL} == TRAIL
        assert all(trail[s]["order_id"] == order_id for s in TRAIL)
        for consumer in ("inventory", "email", "analytics", "billing", "notification"):
            assert {"topic", "partition", "offset", "event_id"} <= set(trail[consumer])
        notified = trail["users"]
        assert notified["user"] == "alice" and notified["invoice_id"].startswith("INV-")
        assert notified["message"] == (f"📩 User notified with invoice {notified['invoice_id']} for order "
                                       f"{order_id}")
    assert events[-1]["event"] == "mesh_stopped"


async def test_at_warning_level_the_trail_is_off_but_the_lifecycle_lines_stay(tmp_path, ports):
    # Tools (meshrun bench, scripts) wait for mesh_ready: it must come whatever the log level.
    config = write_toml(tmp_path / "services.toml", pipeline_data(tmp_path, ports))
    mesh = MeshProcess(config, ",".join(["auth", *TRAIL]), tmp_path, name="quiet",
                       extra=("--log-level", "warning")).start()
    try:
        await mesh.wait_ready(30)
        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        async with aiohttp.ClientSession() as http:
            assert (await post_order(http, f"http://127.0.0.1:{ports['orders']}", "quiet-1", token))[0] == 202
            await eventually(lambda: _notified(http, ports), what="the order's notification")
    finally:
        assert mesh.stop() == 0
    events = [e["event"] for e in mesh.events()]
    assert events[0] == "mesh_ready" and events[-2:] == ["mesh_stopping", "mesh_stopped"]
    assert not set(events) & set(TRAIL.values())


async def _notified(http: aiohttp.ClientSession, ports) -> bool:
    listing = await get_json(http, f"http://127.0.0.1:{ports['users']}/notifications")
    return listing["count"] == 1
