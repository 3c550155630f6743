"""What the test kit says when an expectation fails: each message names what to look at."""
from __future__ import annotations

import pytest

from meshrun.errors import TokenRequestFailed, UnknownTopic
from meshrun.testing import GroupDidNotCatchUp, MeshFactory, NoIssuer, UnknownGroup
from tests.testing.parcels import CONFIG, WAREHOUSE
from tests.testing.test_greeter import GREETER


async def test_waiting_for_a_group_that_never_handles_names_the_group_and_its_lag(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(WAREHOUSE)
    for job in (b"a", b"b", b"c"):
        await mesh.publish("jobs", job, key=b"one-key")  # one partition
    with pytest.raises(GroupDidNotCatchUp) as failure:
        await mesh.handled("warehouse-group", timeout=0.3)
    message = str(failure.value)
    assert message.startswith("group 'warehouse-group' did not handle everything published on jobs within 0.3s: "
                              "committed 0, lag 3 (jobs[")
    assert "] at 0 of 3); 1 live member(s); 0 dead-lettered" in message
    assert failure.value.lag == 3 and failure.value.group == "warehouse-group"
    with pytest.raises(GroupDidNotCatchUp, match="did not handle 1 records on jobs within 0.1s"):
        await mesh.handled("warehouse-group", "jobs", count=1, timeout=0.1)


async def test_a_group_that_reads_nothing_here_is_named_with_the_groups_that_do(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(GREETER)
    with pytest.raises(UnknownGroup, match=r"no topic of this mesh is read by group 'greeter' \(groups: "
                                           r"greeter-group\)"):
        await mesh.handled("greeter")
    with pytest.raises(UnknownGroup, match="group 'greeter' does not read topic 'greetings' in this mesh "
                                           r"\(groups reading it: greeter-group"):
        await mesh.handled("greeter", "greetings")
    with pytest.raises(UnknownTopic, match="unknown topic 'greeting'"):
        mesh.published("greeting")
    with pytest.raises(UnknownTopic, match="unknown topic 'greeting'"):
        mesh.dead_letters("greeting")


async def test_tokens_of_a_mesh_without_protected_routes_need_auth(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(GREETER)
    with pytest.raises(NoIssuer, match="none of its services has a protected route; pass auth=True"):
        await mesh.token()
    with_auth = await mesh_for(GREETER, auth=True)
    assert with_auth.issuer.startswith("http://127.0.0.1:")
    assert await with_auth.machine_token(audience="greeter")


async def test_a_scope_no_route_has_is_refused_by_the_issuer(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(CONFIG)
    with pytest.raises(TokenRequestFailed, match="parcels.admin"):
        await mesh.token(scope="parcels.admin")
    extra = await mesh_for(CONFIG, scopes=["parcels.admin"])
    assert await extra.token(scope="parcels.admin")
