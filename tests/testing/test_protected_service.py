"""The test kit on a project's own service with protected routes: real tokens from a real authorization server
the kit adds, real signatures checked by the service's guard, and a handler whose event is dead-lettered."""
from __future__ import annotations

import pytest

from meshrun.testing import MeshFactory, UndeclaredIdentity
from tests.testing.parcels import CONFIG, ParcelBooked, ParcelShipped


async def test_a_booked_parcel_is_shipped(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(CONFIG)
    token = await mesh.token(scope="parcels.write")
    async with mesh.client("parcels", token) as http, http.post("/parcels/p-1", json={"destination": "lisbon"}) as r:
        assert r.status == 202 and (await r.json())["booked_by"] == "tester"
    await mesh.handled("parcels-group")  # both topics it reads, the shipment its own handler published included
    [booked] = mesh.published("parcels", ParcelBooked)
    [shipped] = mesh.published("shipments", ParcelShipped)
    assert (shipped.parcel_id, shipped.destination, shipped.trace_id) == ("p-1", "lisbon", booked.trace_id)
    assert mesh.dead_letters("shipments") == []


async def test_a_parcel_no_carrier_takes_is_dead_lettered_with_the_reason(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(CONFIG)
    await mesh.publish("parcels", ParcelBooked(parcel_id="p-9", destination="atlantis", booked_by="ops"), key="p-9")
    await mesh.handled("parcels-group")
    [letter] = mesh.dead_letters("shipments")
    [shipped] = mesh.published("shipments")
    assert (letter.group, letter.attempts) == ("parcels-group", 2)  # retry.max_attempts of CONFIG
    assert letter.error == "CarrierRefused: no carrier goes to atlantis"
    assert (letter.topic, letter.partition, letter.offset) == ("shipments", shipped.partition, shipped.offset)
    assert letter.event(ParcelShipped).parcel_id == "p-9"
    assert mesh.dead_letters("shipments.dlq") == [letter]


async def test_routes_need_a_token_with_their_scope(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(CONFIG)
    reader = await mesh.token(scope="parcels.read")
    async with mesh.client("parcels") as anonymous, anonymous.post("/parcels/p-2", json={}) as response:
        assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
    async with mesh.client("parcels", reader) as http:
        async with http.post("/parcels/p-2", json={"destination": "porto"}) as response:
            assert response.status == 403 and "insufficient_scope" in response.headers["WWW-Authenticate"]
        async with http.get("/carriers") as response:
            assert response.status == 200 and (await response.json())["for"] == "tester"
    async with mesh.client("parcels", "not.a.token") as forged, forged.get("/carriers") as response:
        assert response.status == 401
    assert mesh.published("parcels") == []


async def test_machine_tokens_and_declared_users(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(CONFIG, users=["ada", "bob"], clients=["sorter"])
    machine, bob = await mesh.machine_token("sorter", scope="parcels.write"), await mesh.token("bob")
    for token, parcel, booked_by in ((machine, "m-1", "sorter"), (bob, "m-2", "bob")):
        async with mesh.client("parcels", token) as http, http.post(f"/parcels/{parcel}",
                                                                    json={"destination": "faro"}) as response:
            assert response.status == 202 and (await response.json())["booked_by"] == booked_by
    assert sorted(p.booked_by for p in mesh.published("parcels", ParcelBooked)) == ["bob", "sorter"]
    with pytest.raises(UndeclaredIdentity, match=r"user 'eve' is not one the harness declared \(declared: ada, bob\)"):
        await mesh.token("eve")
    with pytest.raises(UndeclaredIdentity, match="client 'tester-client' is not one the harness declared"):
        await mesh.machine_token()
