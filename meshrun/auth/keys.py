"""The issuer's signing keys on disk, the key ring one issuer process signs with, and the JWKS it publishes.

Private keys stay in `keys/` (files readable by their owner only); resource servers only ever see `jwks()`.
A new key is published before it signs (`activates_at`), so resource servers know it before they meet its tokens.
"""
from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
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
    """One private key with its key id (the RFC 7638 thumbprint), algorithm, creation time, the time from which it
    signs (published but not signing before), and the time it was retired at once (`keys rotate --now`), if so."""

    kid: str
    alg: str
    created_at: float
    key: RSAKey | ECKey
    activates_at: float = 0.0
    retired_at: float | None = None

    def live(self, now: float) -> bool:
        return self.retired_at is None or now < self.retired_at

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A compact JWS of `claims`; `header` gets this key's alg and kid."""
        protected = {**header, "alg": self.alg, "kid": self.kid}
        return jws.serialize_compact(protected, orjson.dumps(claims), self.key, algorithms=[self.alg])


def generate_key(alg: str, now: float, activates_at: float | None = None) -> SigningKey:
    if alg == "RS256":
        key: RSAKey | ECKey = RSAKey.generate_key(2048, private=True)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", private=True)
    else:
        raise KeyStoreError(f"signing algorithm {alg!r} is not supported (use one of {', '.join(SIGNING_ALGORITHMS)})")
    return SigningKey(kid=key.thumbprint(), alg=alg, created_at=now, key=key,
                      activates_at=now if activates_at is None else activates_at)


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
            created_at = meta.get("created_at")
            activates_at = meta.get("activates_at", created_at)  # keys written before activation delays sign at once
            retired_at = meta.get("retired_at")
            if alg not in SIGNING_ALGORITHMS or not all(isinstance(v, (int, float)) for v in (created_at, activates_at)) \
                    or not isinstance(retired_at, (int, float, type(None))):
                raise KeyStoreError(f"{meta_path}: expected {{\"alg\": one of {list(SIGNING_ALGORITHMS)}, "
                                    "\"created_at\": seconds, \"activates_at\": seconds, \"retired_at\": seconds or "
                                    "null}}")
            try:
                key: RSAKey | ECKey = (RSAKey if alg == "RS256" else ECKey).import_key(pem)
            except (JoseError, ValueError, TypeError) as exc:
                raise KeyStoreError(f"{key_path}: not a valid {alg} private key ({exc})") from None
            if key.thumbprint() != kid:
                raise KeyStoreError(f"{key_path}: the key's thumbprint is {key.thumbprint()}, not its file name")
            keys.append(SigningKey(kid=kid, alg=alg, created_at=float(created_at), key=key,
                                   activates_at=float(activates_at),
                                   retired_at=None if retired_at is None else float(retired_at)))
        keys.sort(key=lambda k: (k.created_at, k.kid))
        return keys

    def save(self, key: SigningKey) -> None:
        self._ensure_directory()
        pem = key.key.private_key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self._write(f"{key.kid}{KEY_SUFFIX}", pem, 0o600)
        self.save_metadata(key)

    def save_metadata(self, key: SigningKey) -> None:
        """Written last, atomically: a key exists for readers once this file does (and changes all at once)."""
        self._write(f"{key.kid}{META_SUFFIX}",
                    orjson.dumps({"kid": key.kid, "alg": key.alg, "created_at": key.created_at,
                                  "activates_at": key.activates_at, "retired_at": key.retired_at},
                                 option=orjson.OPT_INDENT_2), 0o644)

    def shared_secret(self, name: str) -> bytes:
        """32 random bytes kept in `<name>.secret` (mode 0600), created on first use: a secret every issuer process
        sharing this directory holds (the login form's CSRF tokens are checked with it wherever they land)."""
        path = self.directory / f"{name}.secret"
        with self.locked():
            if not path.exists():
                self._write(path.name, os.urandom(32), 0o600)
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise KeyStoreError(f"{path}: secret is readable by other users (mode {mode:04o}); run "
                                    f"`chmod 600 {path}`")
            secret = path.read_bytes()
        if len(secret) < 32:
            raise KeyStoreError(f"{path}: expected 32 random bytes; delete the file and it is created again")
        return secret

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


class KeyState(Enum):
    """Where a key is in its life. PENDING -> ACTIVE -> PUBLISHED -> RETIRED; `rotate --now` retires at once."""

    PENDING = "pending"      # in the JWKS, signs from activates_at: resource servers fetch it before its tokens
    ACTIVE = "active"        # signs new tokens (one key at a time)
    PUBLISHED = "published"  # replaced, still in the JWKS until every token it signed has expired
    RETIRED = "retired"      # out of the JWKS: its tokens are refused; its files go at the next rotation


@dataclass(frozen=True, slots=True)
class KeyStatus:
    key: SigningKey
    state: KeyState
    until: float | None = None  # PENDING: when it starts signing; PUBLISHED: when it leaves the JWKS


def _activation_order(key: SigningKey) -> tuple[float, float, str]:
    return key.activates_at, key.created_at, key.kid


def key_states(keys: list[SigningKey], now: float, retention: float) -> list[KeyStatus]:
    """Each key's state at `now`, in activation order. A key replaced by a newer active one stays PUBLISHED until
    `retention` seconds after that one started signing (by then every token the old key signed has expired)."""
    ordered = sorted(keys, key=_activation_order)
    live = [k for k in ordered if k.live(now)]
    started = [k for k in live if k.activates_at <= now]
    # Normally the newest key that has started signing; if none has (only pending keys are left), the next to start.
    active = started[-1] if started else (live[0] if live else None)
    statuses = []
    for key in ordered:
        if not key.live(now):
            statuses.append(KeyStatus(key, KeyState.RETIRED))
        elif key is active:
            statuses.append(KeyStatus(key, KeyState.ACTIVE))
        elif key.activates_at > now:
            statuses.append(KeyStatus(key, KeyState.PENDING, key.activates_at))
        else:
            successor = next(k for k in started if _activation_order(k) > _activation_order(key))
            until = successor.activates_at + retention
            statuses.append(KeyStatus(key, KeyState.PUBLISHED, until) if now < until
                            else KeyStatus(key, KeyState.RETIRED))
    return statuses


def signing_key(keys: list[SigningKey], now: float) -> SigningKey | None:
    return next((s.key for s in key_states(keys, now, 0.0) if s.state is KeyState.ACTIVE), None)


def published(keys: list[SigningKey], now: float, retention: float) -> list[SigningKey]:
    """The keys whose public halves belong in the JWKS: pending, active, and replaced ones still verifying."""
    return [s.key for s in key_states(keys, now, retention) if s.state is not KeyState.RETIRED]


def rotate(store: KeyStore, alg: str, retention: float, *, activation_delay: float = 0.0, immediately: bool = False,
           now: float | None = None) -> tuple[SigningKey, list[str]]:
    """Add a new signing key, published now and signing `activation_delay` seconds later; with `immediately`, it
    signs at once and every other key is retired (a compromised key: its outstanding tokens are refused).
    Deletes the files of keys no longer published; returns (new key, deleted kids)."""
    now = time.time() if now is None else now
    with store.locked():
        keys = store.load()
        created = max([now] + [k.created_at + 0.001 for k in keys])
        starts = created if immediately else max([created + activation_delay]
                                                 + [k.activates_at + 0.001 for k in keys if k.live(now)])
        key = generate_key(alg, created, starts)
        store.save(key)
        if immediately:
            for old in keys:
                if old.live(now):
                    store.save_metadata(replace(old, retired_at=now))
            keys = [replace(k, retired_at=now) if k.live(now) else k for k in keys]
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

    def signing_key(self, now: float) -> SigningKey:
        """The key that signs at `now`: a rotated-in key takes over at its activation time, in every process."""
        self._refresh()
        key = signing_key(self._keys, now)
        if key is None:
            raise KeyStoreError(f"{self.store.directory}: no usable signing key (every key is retired); run "
                                "`meshrun keys rotate --now`")
        return key

    def published(self, now: float) -> list[SigningKey]:
        self._refresh()
        return published(self._keys, now, self.retention)

    def states(self, now: float) -> list[KeyStatus]:
        self._refresh()
        return key_states(self._keys, now, self.retention)

    def jwks(self, now: float) -> dict[str, Any]:
        """The JWK Set (RFC 7517) of the published keys, newest first: public parameters only."""
        return {"keys": [k.public_jwk() for k in reversed(self.published(now))]}
