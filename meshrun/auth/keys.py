"""The issuer's signing keys on disk, the key ring one issuer process signs with, and the JWKS it publishes.

Private keys stay in `keys/` (files readable by their owner only); resource servers only ever see `jwks()`.
"""
from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from meshrun.errors import KeyStoreError

# ES256 by default: signing costs ~50 µs against ~400 µs for RS256, and the issuer signs on an event loop it
# shares with other services (token endpoint: ~1600 vs ~700 tokens/s measured, tests/auth/bench_auth.py). Every
# mainstream JWT library verifies ES256; RS256 (which RFC 9068 §2.1 has every issuer and resource server support,
# as ours do) is one setting away for a consumer that only knows RSA.
SIGNING_ALGORITHMS = ("ES256", "RS256")
DEFAULT_SIGNING_ALGORITHM = "ES256"
KEY_SUFFIX = ".key.pem"
META_SUFFIX = ".json"
# After a rotation the old key keeps being published this long beyond the access-token lifetime: covers another
# issuer process that has not noticed the rotation yet, and clock skew between the issuer and resource servers.
RETENTION_MARGIN = 60.0
log = structlog.get_logger("meshrun.auth.keys")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key with its key id (the RFC 7638 thumbprint), algorithm and creation time."""

    kid: str
    alg: str
    created_at: float
    key: RSAKey | ECKey

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A compact JWS of `claims`; `header` gets this key's alg and kid."""
        protected = {**header, "alg": self.alg, "kid": self.kid}
        return jws.serialize_compact(protected, orjson.dumps(claims), self.key, algorithms=[self.alg])


def generate_key(alg: str, now: float) -> SigningKey:
    if alg == "RS256":
        key: RSAKey | ECKey = RSAKey.generate_key(2048, private=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", private=True)
    else:
        raise KeyStoreError(f"signing algorithm {alg!r} is not supported (use one of {', '.join(SIGNING_ALGORITHMS)})")
    return SigningKey(kid=key.thumbprint(), alg=alg, created_at=now, key=key)


class KeyStore:
    """The files of `keys/`: `<kid>.key.pem` (the private key, mode 0600) and `<kid>.json` (alg, creation time).

    Several processes may share the directory: creating the first key takes a file lock, and a key counts as
    present once its metadata file exists (it is written last, by an atomic rename).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def listing(self) -> frozenset[str]:
        """The key ids present now: cheap enough to call on every signature to notice another process's rotation."""
        try:
            return frozenset(e.name[: -len(META_SUFFIX)] for e in os.scandir(self.directory)
                             if e.name.endswith(META_SUFFIX) and not e.name.startswith("."))
        except FileNotFoundError:
            return frozenset()

    def load(self) -> list[SigningKey]:
        """Every complete key, oldest first. Raises KeyStoreError naming the file and what to do about it."""
        keys = []
        for kid in sorted(self.listing()):
            meta_path = self.directory / f"{kid}{META_SUFFIX}"
            key_path = self.directory / f"{kid}{KEY_SUFFIX}"
            try:
                meta = orjson.loads(meta_path.read_bytes())
                mode = key_path.stat().st_mode
                pem = key_path.read_bytes()
            except FileNotFoundError:
                continue  # removed by a concurrent `meshrun keys rotate` that pruned it
            except (OSError, orjson.JSONDecodeError) as exc:
                raise KeyStoreError(f"{meta_path}: cannot read key metadata ({exc}); delete both files of key {kid} "
                                    "or restore them") from None
            if stat.S_IMODE(mode) & 0o077:
                raise KeyStoreError(f"{key_path}: private key is readable by other users (mode "
                                    f"{stat.S_IMODE(mode):04o}); run `chmod 600 {key_path}`")
            alg = meta.get("alg")
            if alg not in SIGNING_ALGORITHMS or not isinstance(meta.get("created_at"), (int, float)):
                raise KeyStoreError(f"{meta_path}: expected {{\"alg\": one of {list(SIGNING_ALGORITHMS)}, "
                                    "\"created_at\": seconds}}")
            try:
                key: RSAKey | ECKey = (RSAKey if alg == "RS256" else ECKey).import_key(pem)
            except (JoseError, ValueError, TypeError) as exc:
                raise KeyStoreError(f"{key_path}: not a valid {alg} private key ({exc})") from None
            if key.thumbprint() != kid:
                raise KeyStoreError(f"{key_path}: the key's thumbprint is {key.thumbprint()}, not its file name")
            keys.append(SigningKey(kid=kid, alg=alg, created_at=float(meta["created_at"]), key=key))
        keys.sort(key=lambda k: (k.created_at, k.kid))
        return keys

    def save(self, key: SigningKey) -> None:
        self._ensure_directory()
        pem = key.key.private_key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self._write(f"{key.kid}{KEY_SUFFIX}", pem, 0o600)
        self._write(f"{key.kid}{META_SUFFIX}",
                    orjson.dumps({"kid": key.kid, "alg": key.alg, "created_at": key.created_at},
                                 option=orjson.OPT_INDENT_2), 0o644)

    def delete(self, kid: str) -> None:
        for suffix in (META_SUFFIX, KEY_SUFFIX):  # metadata first: a half-deleted key is simply absent
            try:
                (self.directory / f"{kid}{suffix}").unlink()
            except FileNotFoundError:
                pass

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes: two issuers starting at once must not both create a first key."""
        self._ensure_directory()
        fd = os.open(self.directory / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyStoreError(f"{self.directory}: cannot create the keys directory ({exc})") from None

    def _write(self, name: str, data: bytes, mode: int) -> None:
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # the umask may have narrowed or widened it
        os.replace(tmp, self.directory / name)


def ensure_keys(store: KeyStore, alg: str, now: float | None = None) -> list[SigningKey]:
    """The keys of `store`, creating a first one if there is none (first start)."""
    with store.locked():
        keys = store.load()
        if not keys:
            key = generate_key(alg, time.time() if now is None else now)
            store.save(key)
            keys = [key]
    return keys


def published(keys: list[SigningKey], now: float, retention: float) -> list[SigningKey]:
    """The keys whose public halves belong in the JWKS: the newest (it signs), and each older key until
    `retention` seconds after the next key replaced it (by then every token it signed has expired)."""
    ordered = sorted(keys, key=lambda k: (k.created_at, k.kid))
    kept = []
    for key, successor in zip(ordered, ordered[1:] + [None]):
        if successor is None or now < successor.created_at + retention:
            kept.append(key)
    return kept


def rotate(store: KeyStore, alg: str, retention: float, now: float | None = None
           ) -> tuple[SigningKey, list[str]]:
    """Add a new signing key and delete the files of keys no longer published; returns (new key, deleted kids)."""
    now = time.time() if now is None else now
    with store.locked():
        keys = store.load()
        key = generate_key(alg, max([now] + [k.created_at + 0.001 for k in keys]))
        store.save(key)
        keep = {k.kid for k in published(keys + [key], now, retention)}
        gone = [k.kid for k in keys if k.kid not in keep]
        for kid in gone:
            store.delete(kid)
    return key, gone


class KeyRing:
    """The keys one issuer process signs with and publishes. Notices keys another process added (a rotation)
    by re-listing the directory at most every `check_interval` seconds."""

    def __init__(self, store: KeyStore, retention: float, *, check_interval: float = 0.25) -> None:
        self.store = store
        self.retention = retention
        self.check_interval = check_interval
        self._keys: list[SigningKey] = []
        self._listing: frozenset[str] = frozenset()
        self._checked_at = float("-inf")

    def load(self, alg: str) -> None:
        """First load: create a key if the directory has none."""
        self._keys = ensure_keys(self.store, alg)
        self._listing = frozenset(k.kid for k in self._keys)
        self._checked_at = time.monotonic()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.check_interval:
            return
        self._checked_at = now
        listing = self.store.listing()
        if listing != self._listing:
            self._listing = listing
            try:
                keys = self.store.load()
            except KeyStoreError as exc:  # a broken file dropped in by hand must not stop token issuance
                log.error("signing_keys_not_reloaded", problem=str(exc), keeps=[k.kid for k in self._keys])
                return
            if keys:  # an emptied directory keeps the keys in memory: tokens already issued stay verifiable
                self._keys = keys

    def signing_key(self) -> SigningKey:
        self._refresh()
        if not self._keys:
            raise KeyStoreError(f"{self.store.directory}: no signing key loaded")
        return self._keys[-1]

    def published(self, now: float) -> list[SigningKey]:
        self._refresh()
        return published(self._keys, now, self.retention)

    def jwks(self, now: float) -> dict[str, Any]:
        """The JWK Set (RFC 7517) of the published keys, newest first: public parameters only."""
        return {"keys": [k.public_jwk() for k in reversed(self.published(now))]}
