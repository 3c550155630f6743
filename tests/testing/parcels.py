"""A user's own small service, as a project would write it, for the test kit's tests: a route protected by a scope
that publishes, a handler that publishes onwards, and one that raises for a destination it cannot serve."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from meshrun import EventContext, RetryLater, Service, ServiceContext
from meshrun.events import Event, register
from meshrun.http.server import CLAIMS, json_response
from meshrun.transport.base import Record


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ParcelBooked(Event):
    TYPE = "test.parcel.booked"
    VERSION = 1
    parcel_id: str
    destination: str
    booked_by: str


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ParcelShipped(Event):
    TYPE = "test.parcel.shipped"
    VERSION = 1
    parcel_id: str
    destination: str


class CarrierRefused(Exception):
    """No carrier goes to this destination."""


service = Service("parcels")
service.publisher("parcels", "shipments")


@service.route("POST", "/parcels/{parcel_id}", scope="parcels.write")
async def book(request: web.Request, ctx: ServiceContext) -> web.Response:
    body = await request.json()
    event = ParcelBooked(parcel_id=request.match_info["parcel_id"], destination=str(body["destination"]),
                         booked_by=request[CLAIMS].sub)
    await ctx.publish("parcels", event, key=event.parcel_id)
    return json_response({"parcel_id": event.parcel_id, "booked_by": event.booked_by}, status=202)


@service.route("GET", "/carriers", scope="parcels.read")
async def carriers(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response({"carriers": ["post", "rail"], "for": request[CLAIMS].sub})


@service.subscribe("parcels", event=ParcelBooked)
async def ship(parcel: ParcelBooked, ctx: EventContext) -> None:
    await ctx.publish("shipments", ParcelShipped(parcel_id=parcel.parcel_id, destination=parcel.destination,
                                                 trace_id=parcel.trace_id), key=parcel.parcel_id)


@service.subscribe("shipments", event=ParcelShipped)
async def hand_to_carrier(parcel: ParcelShipped, ctx: EventContext) -> None:
    if parcel.destination == "atlantis":
        raise CarrierRefused(f"no carrier goes to {parcel.destination}")
    ctx.log.info("parcel_handed_to_carrier", parcel_id=parcel.parcel_id)


# What a project's services.toml would say, as a dict: no ports (the test kit chooses them), no auth service (the
# kit runs one, since the routes are protected).
CONFIG = {
    "topics": {"parcels": {"partitions": 3}, "shipments": {"partitions": 2}},
    "services": {"parcels": {"module": "tests.testing.parcels", "group": "parcels-group",
                             "retry": {"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.01}}},
}


# A second service of the module: a warehouse that is closed, so its group never gets past its first job.
warehouse = Service("warehouse")


@warehouse.subscribe("jobs")
async def wait_for_the_warehouse(record: Record, ctx: EventContext) -> None:
    raise RetryLater("the warehouse is closed")


WAREHOUSE = {
    "mesh": {"grace_period": 0.2},  # its handler never returns on its own: stop it quickly at the test's end
    "topics": {"jobs": {"partitions": 2}},
    "services": {"warehouse": {"module": "tests.testing.parcels:warehouse", "group": "warehouse-group",
                               "retry": {"backoff_initial": 0.01, "backoff_max": 0.05}}},
}
