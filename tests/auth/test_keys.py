"""The keys directory: created on first start with owner-only private keys, loaded later, rotated (published
before they sign, or at once for a compromised key), pruned, and shared safely by several processes."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from meshrun.auth.keys import (
    KeyRing,
    KeyState,
    KeyStore,
    ensure_keys,
    generate_key,
    key_states,
    published,
    rotate,
    signing_key,
)
from meshrun.errors import KeyStoreError


def test_first_start_creates_one_owner_only_key_and_later_starts_load_it(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (key,) = ensure_keys(store, "RS256")
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / f"{key.kid}.key.pem").stat().st_mode & 0o777 == 0o600
    (again,) = ensure_keys(store, "RS256")
    assert again.kid == key.kid and again.created_at == key.created_at


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (key,) = ensure_keys(store, "ES256")
    os.chmod(tmp_path / "keys" / f"{key.kid}.key.pem", 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        store.load()


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (key,) = ensure_keys(store, "RS256")
    (tmp_path / "keys" / f"{key.kid}.key.pem").write_text("not a key")
    with pytest.raises(KeyStoreError, match=f"{key.kid}.key.pem: not a valid RS256 private key"):
        store.load()


def test_processes_starting_together_create_a_single_first_key(tmp_path: Path) -> None:
    results: list[str] = []

    def start() -> None:
        results.append(ensure_keys(KeyStore(tmp_path / "keys"), "ES256")[0].kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(KeyStore(tmp_path / "keys").load()) == 1


def test_rotation_keeps_the_old_public_key_published_until_its_tokens_expired(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (old,) = ensure_keys(store, "RS256", now=1000.0)
    new, deleted = rotate(store, "RS256", retention=360.0, now=2000.0)
    assert deleted == []
    keys = store.load()
    assert [k.kid for k in keys] == [old.kid, new.kid]
    assert [k.kid for k in published(keys, 2000.0 + 359, 360.0)] == [old.kid, new.kid]
    assert [k.kid for k in published(keys, 2000.0 + 360, 360.0)] == [new.kid]
    newest, deleted = rotate(store, "ES256", retention=360.0, now=3000.0)
    assert deleted == [old.kid] and [k.kid for k in store.load()] == [new.kid, newest.kid]
    assert newest.alg == "ES256"


def test_a_running_key_ring_notices_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    ring = KeyRing(KeyStore(tmp_path / "keys"), retention=360.0, check_interval=0.0)
    ring.load("RS256")
    first = ring.signing_key(time.time())
    new, _ = rotate(KeyStore(tmp_path / "keys"), "RS256", 360.0, activation_delay=30.0)
    assert {k["kid"] for k in ring.jwks(time.time())["keys"]} == {first.kid, new.kid}, "published at once"
    assert ring.signing_key(time.time()).kid == first.kid, "not signing before its activation"
    assert ring.signing_key(new.activates_at).kid == new.kid
    assert {k["kid"] for k in ring.jwks(new.activates_at + 1)["keys"]} == {first.kid, new.kid}
    assert all("d" not in k and "p" not in k for k in ring.jwks(new.created_at)["keys"]), "public parts only"


def test_generate_refuses_unknown_algorithms() -> None:
    with pytest.raises(KeyStoreError, match="not supported"):
        generate_key("HS256", 0.0)


def test_a_broken_key_file_dropped_in_later_does_not_stop_signing(tmp_path: Path) -> None:
    ring = KeyRing(KeyStore(tmp_path / "keys"), retention=360.0, check_interval=0.0)
    ring.load("ES256")
    kid = ring.signing_key(time.time()).kid
    (tmp_path / "keys" / "broken.json").write_text("{not json")
    assert ring.signing_key(time.time()).kid == kid


def test_a_rotated_key_is_published_first_and_signs_after_the_activation_delay(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (old,) = ensure_keys(store, "ES256", now=1000.0)
    new, _ = rotate(store, "ES256", retention=360.0, activation_delay=360.0, now=2000.0)
    keys = store.load()
    states = {s.key.kid: (s.state, s.until) for s in key_states(keys, 2000.0, 360.0)}
    assert states == {old.kid: (KeyState.ACTIVE, None), new.kid: (KeyState.PENDING, 2360.0)}
    assert signing_key(keys, 2359.0).kid == old.kid and signing_key(keys, 2360.0).kid == new.kid
    # The old key verifies the tokens it signed until they have expired: retention after it stopped signing.
    later = {s.key.kid: (s.state, s.until) for s in key_states(keys, 2360.0, 360.0)}
    assert later == {old.kid: (KeyState.PUBLISHED, 2720.0), new.kid: (KeyState.ACTIVE, None)}
    assert [k.kid for k in published(keys, 2720.0, 360.0)] == [new.kid]


def test_rotating_now_signs_at_once_and_retires_every_other_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (old,) = ensure_keys(store, "ES256", now=1000.0)
    pending, _ = rotate(store, "ES256", retention=360.0, activation_delay=360.0, now=2000.0)
    new, deleted = rotate(store, "ES256", retention=360.0, now=2001.0, immediately=True)
    assert sorted(deleted) == sorted([old.kid, pending.kid]), "a compromised key's files go at once"
    keys = store.load()
    assert [k.kid for k in keys] == [new.kid] and signing_key(keys, 2001.0).kid == new.kid


def test_keys_written_before_activation_delays_sign_from_their_creation(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    (key,) = ensure_keys(store, "ES256", now=1000.0)
    meta = tmp_path / "keys" / f"{key.kid}.json"
    meta.write_bytes(orjson.dumps({"kid": key.kid, "alg": "ES256", "created_at": 1000.0}))
    (loaded,) = store.load()
    assert loaded.activates_at == 1000.0 and loaded.retired_at is None


def test_the_shared_secret_is_created_once_and_owner_only(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    secret = store.shared_secret("csrf")
    assert len(secret) == 32 and KeyStore(tmp_path / "keys").shared_secret("csrf") == secret
    assert (tmp_path / "keys" / "csrf.secret").stat().st_mode & 0o777 == 0o600
    os.chmod(tmp_path / "keys" / "csrf.secret", 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        store.shared_secret("csrf")
