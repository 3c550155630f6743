"""Discovery: RFC 8414 metadata at both well-known addresses, and the JWK Set with public keys only."""
from __future__ import annotations

import pytest

from tests.auth.conftest import AuthMesh, StartMesh


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
async def test_metadata_lists_every_endpoint_and_capability(auth: AuthMesh, path: str) -> None:
    async with auth.session.get(auth.issuer + path) as response:
        assert response.status == 200 and response.content_type == "application/json"
        metadata = await response.json()
    base = auth.issuer
    assert metadata["issuer"] == base
    assert metadata["authorization_endpoint"] == f"{base}/oauth2/authorize"
    assert metadata["token_endpoint"] == f"{base}/oauth2/token"
    assert metadata["jwks_uri"] == f"{base}/oauth2/jwks"
    assert metadata["introspection_endpoint"] == f"{base}/oauth2/introspect"
    assert metadata["revocation_endpoint"] == f"{base}/oauth2/revoke"
    assert set(metadata["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(
        metadata["token_endpoint_auth_methods_supported"])
    assert "none" not in metadata["introspection_endpoint_auth_methods_supported"]
    assert "orders.write" in metadata["scopes_supported"]


async def test_the_jwks_holds_public_signature_keys_with_kids(auth: AuthMesh) -> None:
    async with auth.session.get(auth.issuer + "/oauth2/jwks") as response:
        assert response.status == 200 and "max-age" in response.headers["Cache-Control"]
        jwks = await response.json()
    (key,) = jwks["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["kid"]
    assert key["use"] == "sig" and "d" not in key


async def test_an_rs256_issuer_publishes_an_rsa_key_and_resource_servers_follow(start_mesh: StartMesh) -> None:
    auth = await start_mesh(signing_alg="RS256")
    async with auth.session.get(auth.issuer + "/oauth2/jwks") as response:
        (key,) = (await response.json())["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    token = (await auth.client_token())["access_token"]
    assert (await auth.call("users-api", "POST", "/notify", token))[0] == 200
