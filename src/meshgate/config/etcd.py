"""The etcd v3 client Meshgate uses: endpoints, auth, TLS, and a watch that keeps revisions.

Built on ``aetcd`` (asyncio, grpcio, maintained): its generated etcd API stubs, its
``Client`` for unary calls (range, put, delete, txn, lease).  Three things are added here,
each for a reason:

* **several endpoints** (``deployment.etcd.host`` lists a cluster): one channel at a
  time, and a call that cannot reach its member (UNAVAILABLE, deadline) is tried on the
  next one before it fails; a killed member therefore costs one failed attempt, never
  an outage;
* **TLS** (``https://`` endpoints, client certificate ``deployment.etcd.tls``, CA from
  ``apisix.ssl.ssl_trusted_certificate``) and auth tokens re-obtained when they expire;
* **the watch stream is read response by response** (aetcd's own watcher flattens
  responses into single events and loses the header revision): one response is one etcd
  revision (a transaction's writes arrive together), progress notifications carry the
  revision the watcher has reached, and a compaction is reported as
  :class:`EtcdCompacted` so the caller re-lists.  Each watch also asks etcd to cancel it
  when its member loses the cluster's leader (``hasleader``), so a gateway never sits
  on a partitioned member believing nothing changes.

Every failure surfaces as :class:`EtcdUnavailable` with the endpoints tried, or
:class:`EtcdCompacted`; aetcd's and grpc's exception types never leave this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import exceptions as aetcd_exc
from aetcd import rpc

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "EtcdCompacted", "KV", "WatchEvent", "WatchBatch",
           "Endpoint", "parse_endpoints", "prefix_end"]

log = logging.getLogger("meshgate.etcd")

# A config of many thousands of objects is one range response: let it through.
_MAX_MESSAGE = 256 * 1024 * 1024


class EtcdError(Exception):
    """Base of the errors of this module."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (or the cluster could not serve the call)."""


class EtcdCompacted(EtcdError):
    """The watched revision was compacted away: list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: the events of (at most) one revision, or a progress notice."""

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"


def parse_endpoints(hosts: Sequence[str]) -> list[Endpoint]:
    """``deployment.etcd.host`` entries (``http://127.0.0.1:2379``) as endpoints.

    Raises ValueError naming the bad entry."""
    out = []
    for i, h in enumerate(hosts):
        u = urlsplit(h if "://" in h else "http://" + h)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"deployment.etcd.host[{i}]: expected http(s)://HOST:PORT, got {h!r}")
        try:
            port = u.port or 2379
        except ValueError:
            raise ValueError(f"deployment.etcd.host[{i}]: bad port in {h!r}") from None
        out.append(Endpoint(u.hostname, port, u.scheme == "https"))
    if not out:
        raise ValueError("deployment.etcd.host: expected at least one endpoint")
    return out


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, end)`` exactly the keys starting with prefix."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def _kv(m: Any) -> KV:
    return KV(key=m.key.decode("utf-8", "replace"), value=bytes(m.value), create_revision=int(m.create_revision),
              mod_revision=int(m.mod_revision), lease=int(m.lease))


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client on a channel of our making (TLS, message size, keepalive)."""

    def __init__(self, ep: Endpoint, *, credentials: grpc.ChannelCredentials | None,
                 sni: str | None, **kw: Any) -> None:
        super().__init__(host=ep.host, port=ep.port, **kw)
        self._credentials = credentials
        self._sni = sni

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # fail fast on a dead member instead of waiting for a reconnect backoff
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self._credentials is not None:
            if self._sni:
                options.append(("grpc.ssl_target_name_override", self._sni))
            self.channel = rpc.secure_channel(target, self._credentials, options=options)
        else:
            self.channel = rpc.insecure_channel(target, options=options)
        try:
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                resp = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                                  metadata=self.metadata)
        except BaseException:
            await self.channel.close()
            self._init_channel_attrs()
            raise
        self._connected.set()


_RETRYABLE = (aetcd_exc.ConnectionFailedError, aetcd_exc.ConnectionTimeoutError, aetcd_exc.UnauthenticatedError,
              aetcd_exc.InternalError, asyncio.TimeoutError)


class EtcdClient:
    """One logical connection to an etcd cluster (see the module docstring)."""

    def __init__(self, endpoints: Sequence[str], *, user: str | None = None, password: str | None = None,
                 timeout: float = 30.0, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, sni: str | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.user, self.password = user, password
        self.timeout = timeout
        self._sni = sni
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        self._idx = 0
        self._client: _Client | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def _credentials(self) -> grpc.ChannelCredentials:
        def read(p: str | None) -> bytes | None:
            if p is None:
                return None
            with open(p, "rb") as f:
                return f.read()
        return grpc.ssl_channel_credentials(root_certificates=read(self._ca_file), private_key=read(self._key_file),
                                            certificate_chain=read(self._cert_file))

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._idx]

    async def _connected(self) -> _Client:
        c = self._client
        if c is not None:
            return c
        async with self._lock:
            if self._client is None:
                ep = self.endpoints[self._idx]
                c = _Client(ep, credentials=self._credentials() if ep.tls else None, sni=self._sni,
                            username=self.user, password=self.password, timeout=self.timeout)
                try:
                    await c.connect()
                except aetcd_exc.ClientError as e:
                    raise _Failed(e) from e
                except grpc.RpcError as e:
                    raise _Failed(e) from e
                self._client = c
            return self._client

    async def _drop(self, c: _Client | None) -> None:
        """Forget a failed channel and move to the next endpoint.  The channel is closed in
        the background, with a bound: closing waits for the calls still on it (a watch, a
        call stuck on a half-dead member), and the caller, often an Admin API request
        that must answer 503 now, never waits for that."""
        async with self._lock:
            if c is None or self._client is not c:
                return
            self._client = None
            self._idx = (self._idx + 1) % len(self.endpoints)
        t = asyncio.get_running_loop().create_task(self._close_quietly(c))
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_quietly(c: _Client) -> None:
        try:
            await asyncio.wait_for(c.close(), 5.0)
        except Exception:  # closing a broken channel may itself fail or hang
            pass

    async def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn(client)``; on a connection-level failure try the next endpoint."""
        errors: list[str] = []
        # every endpoint once, plus one more try: an expired auth token costs a reconnect
        # (which authenticates again), not a failed call
        for _ in range(len(self.endpoints) + 1):
            ep = self.endpoint
            c: _Client | None = None
            try:
                c = await self._connected()
                return await fn(c)
            except _Failed as e:
                errors.append(f"{ep}: {_reason(e.error)}")
                await self._drop(c if c is not None else self._client)
                if c is None:
                    self._idx = (self._idx + 1) % len(self.endpoints)
            except _RETRYABLE as e:
                errors.append(f"{ep}: {_reason(e)}")
                await self._drop(c)
            except asyncio.CancelledError:
                # grpc.aio cancels the calls still on a channel that is being closed (another
                # caller dropped it after its own failure, e.g. the watch when a member died):
                # that is a failure of this call, not a cancellation of the caller, which would
                # otherwise never answer (an Admin API request left without a response)
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                errors.append(f"{ep}: the connection was closed during the call")
                await self._drop(c)
        raise EtcdUnavailable(f"etcd {what} failed: " + "; ".join(errors))

    async def close(self) -> None:
        async with self._lock:
            c, self._client = self._client, None
        if c is not None:
            await c.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- KV ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        async def fn(c: _Client) -> KV | None:
            r = await c.kvstub.Range(rpc.RangeRequest(key=key.encode()), timeout=self.timeout, metadata=c.metadata)
            return _kv(r.kvs[0]) if r.kvs else None
        return await self._call("get", _wrap(fn))  # type: ignore[no-any-return]

    async def get_prefix(self, prefix: str) -> tuple[int, list[KV]]:
        """Every key under ``prefix`` (key order) and the store revision of the read."""
        p = prefix.encode()

        async def fn(c: _Client) -> tuple[int, list[KV]]:
            r = await c.kvstub.Range(rpc.RangeRequest(key=p, range_end=prefix_end(p)), timeout=self.timeout,
                                     metadata=c.metadata)
            return int(r.header.revision), [_kv(m) for m in r.kvs]
        return await self._call("range", _wrap(fn))  # type: ignore[no-any-return]

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write; returns the revision of the write."""
        async def fn(c: _Client) -> int:
            r = await c.kvstub.Put(rpc.PutRequest(key=key.encode(), value=value, lease=lease), timeout=self.timeout,
                                   metadata=c.metadata)
            return int(r.header.revision)
        return await self._call("put", _wrap(fn))  # type: ignore[no-any-return]

    async def put_if(self, key: str, value: bytes, *, mod_revision: int, lease: int = 0) -> int | None:
        """Compare-and-swap: write only if the key's mod_revision is ``mod_revision`` (0: the
        key must not exist).  Returns the new revision, or None when the compare failed."""
        k = key.encode()

        async def fn(c: _Client) -> int | None:
            cmp = rpc.Compare(key=k, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=mod_revision)
            op = rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value, lease=lease))
            r = await c.kvstub.Txn(rpc.TxnRequest(compare=[cmp], success=[op]), timeout=self.timeout,
                                   metadata=c.metadata)
            return int(r.header.revision) if r.succeeded else None
        return await self._call("put", _wrap(fn))  # type: ignore[no-any-return]

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (and, with ``prefix``, every key under ``key``); returns how many."""
        k = key.encode()

        async def fn(c: _Client) -> int:
            req = rpc.DeleteRangeRequest(key=k, range_end=prefix_end(k)) if prefix else rpc.DeleteRangeRequest(key=k)
            r = await c.kvstub.DeleteRange(req, timeout=self.timeout, metadata=c.metadata)
            return int(r.deleted)
        return await self._call("delete", _wrap(fn))  # type: ignore[no-any-return]

    async def grant_lease(self, ttl: int) -> int:
        async def fn(c: _Client) -> int:
            r = await c.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl, ID=0), timeout=self.timeout,
                                             metadata=c.metadata)
            return int(r.ID)
        return await self._call("lease", _wrap(fn))  # type: ignore[no-any-return]

    async def compact(self, revision: int) -> None:
        async def fn(c: _Client) -> None:
            await c.kvstub.Compact(rpc.CompactionRequest(revision=revision, physical=True), timeout=self.timeout,
                                   metadata=c.metadata)
        await self._call("compact", _wrap(fn))

    # -- watch ------------------------------------------------------------------------------
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Watch every key under ``prefix`` from ``start_revision`` (inclusive).

        Yields one :class:`WatchBatch` per watch response (progress notices have no events).
        Ends by raising: :class:`EtcdCompacted` (list again), :class:`EtcdUnavailable`
        (stream lost: member gone, leader lost, auth expired)."""
        ep = self.endpoint
        try:
            c = await self._connected()
        except _Failed as e:
            self._idx = (self._idx + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"etcd watch failed: {ep}: {_reason(e.error)}") from None
        p = prefix.encode()
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=p, range_end=prefix_end(p), start_revision=start_revision, progress_notify=True))
            await stop.wait()   # keep our half of the stream open until the watch ends

        md = tuple(c.metadata or ()) + (("hasleader", "true"),)
        call = rpc.WatchStub(c.channel).Watch(requests(), metadata=md)
        broken = False
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise EtcdCompacted(int(resp.compact_revision))
                if resp.canceled:
                    broken = True
                    raise EtcdUnavailable(f"etcd watch cancelled by {ep}: {resp.cancel_reason or 'no reason given'}")
                if resp.created and not resp.events:
                    continue
                events = tuple(WatchEvent("delete" if ev.type == 1 else "put", _kv(ev.kv)) for ev in resp.events)
                yield WatchBatch(int(resp.header.revision), events)
            broken = True
            raise EtcdUnavailable(f"etcd watch stream ended by {ep}")
        except grpc.RpcError as e:
            broken = True
            raise EtcdUnavailable(f"etcd watch failed: {ep}: {_reason(e)}") from None
        finally:
            # end the call first: closing the channel waits for the calls on it
            stop.set()
            call.cancel()
            if broken:
                await self._drop(c)


class _Failed(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _wrap(fn: Any) -> Any:
    """Map grpc errors of a raw stub call to aetcd's (the retry set is written in those)."""
    async def run(c: _Client) -> Any:
        try:
            return await fn(c)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED):
                raise _Failed(e) from e
            if code == grpc.StatusCode.OUT_OF_RANGE or "compacted" in (e.details() or ""):
                raise EtcdCompacted(0) from e
            raise EtcdError(f"etcd: {e.details() or code.name}") from e
    return run


def _reason(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name.lower()}: {e.details()}"
    return str(e) or type(e).__name__
