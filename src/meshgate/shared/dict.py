"""Numeric shared dicts: one state for every worker process (APISIX's ``ngx.shared.DICT``).

Theory of operation
-------------------
A dict is a fixed-size open-addressing hash table in a file under ``/dev/shm``, mapped
with ``mmap`` by every process that opens it.  The file name carries the *namespace*
(the supervisor's pid and start time, so a recycled pid never meets a stale file) and
the dict name; the first process to open it creates and sizes it, the others map what
is there.

Layout (little endian)::

    header  (64 bytes): magic, layout version, slot count, capacity, live, tombstones
    slot[i] (40 bytes): state u8, 7 pad, key digest 16 bytes, expire f64, value f64

Keys are stored as a 128-bit BLAKE2b digest (fixed-size slots; keys like
``route:conf:remote_addr`` have no length bound).  ``state`` is EMPTY, USED or
TOMB (deleted).  ``expire`` is ``time.monotonic()`` seconds (CLOCK_MONOTONIC is one
clock for the whole machine on Linux) or 0 for no expiry; an expired USED slot reads
as absent and is reused by the next insertion that probes it.

Every operation holds the dict's lock for the few microseconds it runs: a
read-modify-write (``incr``, or several steps inside :meth:`SharedDict.locked`) is atomic
for the whole gateway, which is what makes "100 requests a minute" mean 100 for the
gateway and not per worker.  The lock is a POSIX named semaphore (``posix_ipc``; its
name is the file's, under ``/dev/shm/sem.*``): taken and released without a system call
when nobody else holds it, where a ``flock`` pair costs two (~0.9 us, the larger part of
a limit-count request).  The holder writes its pid into the header while it holds the
lock, so a process that died holding it is noticed: a waiter that has waited
``LOCK_WAIT`` seconds checks that pid, and takes the lock over (one waiter, decided under
``flock``) when that process is gone.  Without ``posix_ipc`` (or where the system refuses a
semaphore) the dict is locked with ``flock`` on the file, which the kernel releases when a
holder dies; the header records which lock the creator chose, and every process follows it.
A new dict always gets a new semaphore: one of the same name left behind is replaced.

Capacity: ``capacity`` live keys in ``2 * capacity`` slots (rounded up to a power of
two).  When live keys plus tombstones pass 3/4 of the slots the table is rebuilt in
place (tombstones and expired keys dropped).  Inserting a new key when ``capacity``
live, unexpired keys exist raises :class:`SharedDictFull`: unlike nginx we never evict a
live counter silently.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import struct
import time
from contextlib import contextmanager
from typing import Any, Callable, Final, Iterator

from ..errors import MeshgateError

# posix_ipc, imported when a process first opens a dict (a worker whose routes keep no shared
# counter never loads it: 0.3 MB); None when it is not installed (flock is the fallback)
_UNLOADED: Any = object()
posix_ipc: Any = _UNLOADED


def _ipc() -> Any:
    global posix_ipc
    if posix_ipc is _UNLOADED:
        try:
            import posix_ipc as mod
        except ImportError:    # pragma: no cover - a dependency
            mod = None
        posix_ipc = mod
    return posix_ipc

flock, LOCK_EX, LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN

__all__ = ["SharedDict", "SharedDictError", "SharedDictFull", "Txn", "open_dict", "cleanup", "namespace",
           "own_namespace", "remove_namespace", "shm_dir", "now", "LOCK_WAIT"]

_MAGIC = b"MGSHDCT1"
_HEADER = struct.Struct("<8sIIIIII")      # magic, layout, slots, capacity, live, tombs, reserved
_HEADER_SIZE = 64
_SLOT = struct.Struct("<B7x16sdd")        # state, digest, expire, value
_SLOT_SIZE = _SLOT.size                   # 40
_LAYOUT = 2                               # 2: the lock kind and the holder's pid in the header
_OFF_LOCK = 28                            # u32 (the header's reserved field): _LOCK_FLOCK or _LOCK_SEM
_LOCK_FLOCK, _LOCK_SEM = 0, 1
_W_HOLDER: Final = 5                      # header word 5: pid of the semaphore's holder (0: none known)
LOCK_WAIT = 1.0                           # seconds a waiter waits before it looks for a dead holder
_PID: Final = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
_EMPTY: Final = 0                         # slot states (constants: compiled code inlines them)
_USED: Final = 1
_TOMB: Final = 2
_OFF_LIVE = 8 + 4 + 4 + 4                 # byte offset of the live counter in the header
_LIVE_TOMBS = struct.Struct("<II")
_OFF_MINEXP = 32                          # f64: earliest expiry of any live key (inf: none)
_F64 = struct.Struct("<d")
_WORDS_HEADER: Final = 8                  # the table as 8-byte words (SharedDict._q / _f)
_WORDS_SLOT: Final = 5
assert _WORDS_HEADER * 8 == _HEADER_SIZE and _WORDS_SLOT * 8 == _SLOT_SIZE

now = time.monotonic


class SharedDictError(MeshgateError):
    """A shared dict cannot be opened or used."""


class SharedDictFull(SharedDictError):
    """The dict holds ``capacity`` live keys and a new key was inserted."""


def shm_dir() -> str:
    d = "/dev/shm"
    if os.path.isdir(d) and os.access(d, os.W_OK):
        return d
    import tempfile   # only without /dev/shm (tempfile pulls shutil, bz2, lzma: ~1 MB per worker)
    return tempfile.gettempdir()


def _start_time(pid: int) -> str:
    """The process start time (clock ticks since boot, /proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def namespace() -> str:
    """Whose dicts this process uses: ``MESHGATE_SHM_NS`` if set, else the parent's.

    Workers are started by the supervisor (``python -m meshgate.proxy.worker``), so the
    parent is the supervisor and every worker of one gateway lands in the same
    namespace, while two gateways on one machine stay apart."""
    ns = os.environ.get("MESHGATE_SHM_NS")
    if ns:
        return ns
    ppid = os.getppid()
    got = _ns_cache.get(ppid)
    if got is None:   # one /proc read per parent, not one per lookup (open_dict runs per request)
        got = _ns_cache[ppid] = f"{ppid}-{_start_time(ppid)}"
    return got


_ns_cache: dict[int, str] = {}


def own_namespace() -> str:
    """The namespace this process's children (workers) land in: for the supervisor itself,
    should it ever open a dict (``open_dict(name, ns=own_namespace())``)."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}"


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _sem_name(path: str) -> str:
    """The semaphore of the dict file at ``path`` (/dev/shm/sem.<file name> on Linux)."""
    return "/" + os.path.basename(path)


def _new_semaphore(path: str) -> bool:
    """A fresh semaphore (value 1) for a dict being created at ``path``: one left by an earlier
    dict of that name (a fixed MESHGATE_SHM_NS, a killed gateway) is replaced, never trusted.
    False when there is no posix_ipc or the system refuses (no writable /dev/shm): the dict is
    then locked with flock."""
    ipc = _ipc()
    if ipc is None:
        return False
    name = _sem_name(path)
    try:
        try:
            ipc.unlink_semaphore(name)
        except ipc.ExistentialError:
            pass
        ipc.Semaphore(name, ipc.O_CREX, 0o600, 1).close()
    except (ipc.Error, OSError, ValueError):   # ValueError: EINVAL (a name the system refuses)
        return False
    return True


def _log_takeover(name: str, holder: int) -> None:
    import logging
    logging.getLogger("meshgate.shared").warning(
        "shared dict %r: its lock was held by process %d, which is gone; taking it over", name, holder)


def _path(ns: str, name: str) -> str:
    return os.path.join(shm_dir(), f"meshgate-{_SAFE.sub('_', ns)}-{_SAFE.sub('_', name)}")


_DIGESTS: Final[dict[str | bytes, tuple[int, int]]] = {}


def _digest(key: str | bytes) -> tuple[int, int]:
    """The key's 128-bit digest as the two little-endian words a slot stores."""
    # limit keys repeat (one per client address and route): a bounded cache saves the hash
    got = _DIGESTS.get(key)
    if got is None:
        h = hashlib.blake2b(key.encode() if isinstance(key, str) else key, digest_size=16).digest()
        got = (int.from_bytes(h[:8], "little"), int.from_bytes(h[8:], "little"))
        if len(_DIGESTS) >= 65536:
            _DIGESTS.clear()
        _DIGESTS[key] = got
    return got


class Txn:
    """Operations run while the dict's lock is held (see :meth:`SharedDict.locked`)."""

    __slots__ = ("_d", "_now")

    def __init__(self, d: SharedDict, t: float) -> None:
        self._d = d
        self._now = t

    @property
    def now(self) -> float:
        return self._now

    def get(self, key: str) -> float | None:
        return self._d._get(_digest(key), self._now)

    def ttl(self, key: str) -> float | None:
        return self._d._ttl(_digest(key), self._now)

    def set(self, key: str, value: float, ttl: float | None = None) -> None:
        self._d._set(_digest(key), float(value), ttl, self._now)

    def incr(self, key: str, delta: float, init: float | None = None, ttl: float | None = None) -> float:
        return self._d._incr(_digest(key), float(delta), init, ttl, self._now)

    def delete(self, key: str) -> None:
        self._d._delete(_digest(key), self._now)


class SharedDict:
    """One named dict of float counters, shared by the processes of a namespace."""

    def __init__(self, name: str, *, capacity: int = 65536, ns: str | None = None) -> None:
        if capacity < 1:
            raise SharedDictError(f"shared dict {name!r}: capacity must be >= 1")
        self.name = name
        self.path = _path(ns if ns is not None else namespace(), name)
        slots = 8
        while slots < 2 * capacity:
            slots *= 2
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise SharedDictError(f"shared dict {name!r}: cannot open {self.path}: {e.strerror}") from e
        self._fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size == 0:  # first opener creates and sizes it
                    os.ftruncate(fd, _HEADER_SIZE + slots * _SLOT_SIZE)
                    kind = _LOCK_SEM if _new_semaphore(self.path) else _LOCK_FLOCK
                    hdr = _HEADER.pack(_MAGIC, _LAYOUT, slots, capacity, 0, 0, kind)
                    os.pwrite(fd, hdr + _F64.pack(float("inf")), 0)
                    size = _HEADER_SIZE + slots * _SLOT_SIZE
                magic, layout, fslots, fcap, _, _, lock = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
                if magic != _MAGIC or layout != _LAYOUT or size != _HEADER_SIZE + fslots * _SLOT_SIZE:
                    raise SharedDictError(f"shared dict {name!r}: {self.path} is not a meshgate shared dict "
                                          f"(layout {_LAYOUT})")
                sem = None
                if lock == _LOCK_SEM:
                    ipc = _ipc()
                    if ipc is None:
                        raise SharedDictError(f"shared dict {name!r}: {self.path} is locked with a POSIX "
                                              "semaphore and posix_ipc is not installed")
                    try:
                        sem = ipc.Semaphore(_sem_name(self.path), ipc.O_CREAT, 0o600, 1)
                    except (ipc.Error, OSError, ValueError) as e:
                        raise SharedDictError(f"shared dict {name!r}: cannot open its semaphore "
                                              f"{_sem_name(self.path)}: {e}") from e
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._mm = mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._sem = sem
        # the creator's sizing wins: every process must agree on the table shape
        self.slots: int = fslots
        self.capacity: int = fcap
        self._mask: int = fslots - 1
        # the table as 8-byte words (header 8 words, 5 per slot: state, digest x2, expire,
        # value): reads and writes of one field, without struct tuples (hot path)
        self._q = memoryview(mm).cast("Q")
        self._f = memoryview(mm).cast("d")

    # -- public API (each call: one lock round trip) -------------------------------------------
    def get(self, key: str) -> float | None:
        """The value, or None when absent or expired."""
        d = _digest(key)
        self._acquire()
        try:
            return self._get(d, now())
        finally:
            self._release()

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires: None when absent, 0.0 when it never expires."""
        d = _digest(key)
        with self._lock():
            return self._ttl(d, now())

    def set(self, key: str, value: float, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` seconds (None or 0: no expiry)."""
        d = _digest(key)
        with self._lock():
            self._set(d, float(value), ttl, now())

    def incr(self, key: str, delta: float, init: float | None = None, ttl: float | None = None) -> float:
        """Add ``delta`` atomically and return the new value (ngx.shared.DICT:incr).

        An absent key starts at ``init`` (``KeyError`` when ``init`` is None) and then
        expires after ``ttl`` seconds; an existing key keeps its expiry."""
        d = _digest(key)
        self._acquire()   # not the _lock() context manager: this is the hot path
        try:
            return self._incr(d, float(delta), init, ttl, now())
        finally:
            self._release()

    def incr_ttl(self, key: str, delta: float, init: float, ttl: float | None = None) -> tuple[float, float]:
        """:meth:`incr` and the key's remaining seconds (0.0: no expiry) in one lock round trip:
        what a fixed-window limiter needs per request."""
        d = _digest(key)
        self._acquire()
        try:
            t = now()
            val, exp = self._incr_exp(d, float(delta), init, ttl, t)
            return val, (0.0 if exp == 0.0 else exp - t)
        finally:
            self._release()

    def delete(self, key: str) -> None:
        d = _digest(key)
        with self._lock():
            self._delete(d, now())

    @contextmanager
    def locked(self) -> Iterator[Txn]:
        """Several operations as one atomic step: ``with d.locked() as tx: tx.get(..); tx.set(..)``."""
        with self._lock():
            yield Txn(self, now())

    def __len__(self) -> int:
        with self._lock():
            t = now()
            return sum(1 for i in range(self.slots) if self._live_at(i, t))

    def flush_all(self) -> None:
        with self._lock():
            self._mm[_HEADER_SIZE:] = bytes(self.slots * _SLOT_SIZE)
            _LIVE_TOMBS.pack_into(self._mm, _OFF_LIVE, 0, 0)
            _F64.pack_into(self._mm, _OFF_MINEXP, float("inf"))

    def close(self) -> None:
        try:
            if self._sem is not None:
                self._sem.close()
            self._q.release()
            self._f.release()
            self._mm.close()
        finally:
            os.close(self._fd)

    # -- internals (lock held) -----------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _acquire(self) -> None:
        sem = self._sem
        if sem is None:
            flock(self._fd, LOCK_EX)
            return
        try:
            sem.acquire(LOCK_WAIT)
        except (posix_ipc.BusyError, posix_ipc.SignalError):   # waited LOCK_WAIT, or a signal came
            self._wait_or_take_over()
            return
        self._q[_W_HOLDER] = _PID[0]

    def _release(self) -> None:
        sem = self._sem
        if sem is None:
            flock(self._fd, LOCK_UN)
            return
        self._q[_W_HOLDER] = 0
        sem.release()

    def _wait_or_take_over(self) -> None:
        """The lock has been held for LOCK_WAIT seconds (or a signal cut the wait short): keep
        waiting while its holder lives; take it over when the holder is gone (it died inside an
        operation, which leaves the table consistent: at worst a count lacks that one update).
        One waiter decides at a time, under ``flock``; a holder that has not written its pid yet
        (pid 0) is given a second look before it is declared gone."""
        sem = self._sem
        assert sem is not None
        anonymous = 0
        while True:
            flock(self._fd, LOCK_EX)
            try:
                try:
                    sem.acquire(0)
                except posix_ipc.BusyError:
                    holder = int(self._q[_W_HOLDER])
                    anonymous = anonymous + 1 if holder == 0 else 0
                    if anonymous >= 2 or (holder not in (0, _PID[0]) and not _alive(holder)):
                        self._q[_W_HOLDER] = _PID[0]
                        _log_takeover(self.name, holder)
                        return
                else:
                    self._q[_W_HOLDER] = _PID[0]
                    return
            finally:
                flock(self._fd, LOCK_UN)
            try:
                sem.acquire(LOCK_WAIT)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                continue
            self._q[_W_HOLDER] = _PID[0]
            return

    def _live_at(self, i: int, t: float) -> bool:
        b = _WORDS_HEADER + i * _WORDS_SLOT
        exp = float(self._f[b + 3])
        return bool(int(self._q[b]) & 0xFF == _USED and (exp == 0.0 or exp > t))

    def _find(self, d: tuple[int, int], t: float) -> tuple[int, int, bool]:
        """Probe for ``d``: (slot of the key or -1, first reusable slot or -1, key expired)."""
        q, f, mask = self._q, self._f, self._mask
        h1, h2 = d
        i = h1 & mask
        reuse = -1
        for _ in range(self.slots):
            b = _WORDS_HEADER + i * _WORDS_SLOT
            if q[b + 1] == h1 and q[b + 2] == h2 and int(q[b]) & 0xFF == _USED:   # the common case: a hit
                exp = float(f[b + 3])
                return i, reuse, exp != 0.0 and exp <= t
            state = int(q[b]) & 0xFF
            if state == _EMPTY:
                return -1, (reuse if reuse >= 0 else i), False
            if state == _USED:
                exp = float(f[b + 3])
                if q[b + 1] == h1 and q[b + 2] == h2:
                    return i, reuse, exp != 0.0 and exp <= t
                if reuse < 0 and exp != 0.0 and exp <= t:
                    reuse = i
            elif reuse < 0:
                reuse = i
            i = (i + 1) & mask
        return -1, reuse, False

    def _get(self, d: tuple[int, int], t: float) -> float | None:
        i, _, expired = self._find(d, t)
        if i < 0 or expired:
            return None
        return float(self._f[_WORDS_HEADER + i * _WORDS_SLOT + 4])

    def _ttl(self, d: tuple[int, int], t: float) -> float | None:
        i, _, expired = self._find(d, t)
        if i < 0 or expired:
            return None
        exp = float(self._f[_WORDS_HEADER + i * _WORDS_SLOT + 3])
        return 0.0 if exp == 0.0 else exp - t

    def _write(self, i: int, d: tuple[int, int], exp: float, value: float) -> None:
        b = _WORDS_HEADER + i * _WORDS_SLOT
        q, f = self._q, self._f
        q[b + 1] = d[0]
        q[b + 2] = d[1]
        f[b + 3] = exp
        f[b + 4] = value
        q[b] = _USED

    def _state(self, i: int) -> int:
        return int(self._q[_WORDS_HEADER + i * _WORDS_SLOT]) & 0xFF

    def _note_expiry(self, exp: float) -> None:
        if exp != 0.0 and exp < _F64.unpack_from(self._mm, _OFF_MINEXP)[0]:
            _F64.pack_into(self._mm, _OFF_MINEXP, exp)

    def _insert(self, d: tuple[int, int], exp: float, value: float, t: float) -> None:
        """Insert a key known to be absent (lock held)."""
        live, tombs = _LIVE_TOMBS.unpack_from(self._mm, _OFF_LIVE)
        full = live >= self.capacity
        if full and _F64.unpack_from(self._mm, _OFF_MINEXP)[0] > t:
            # nothing can have expired yet: refuse without an O(slots) rebuild
            raise SharedDictFull(f"shared dict {self.name!r} is full ({self.capacity} live keys); "
                                 "raise its capacity")
        if full or live + tombs + 1 > self.slots * 3 // 4:
            self._rebuild(t)
            live, tombs = _LIVE_TOMBS.unpack_from(self._mm, _OFF_LIVE)
            if live >= self.capacity:
                raise SharedDictFull(f"shared dict {self.name!r} is full ({self.capacity} live keys); "
                                     "raise its capacity")
        _, reuse, _ = self._find(d, t)
        state = self._state(reuse)
        if state == _EMPTY:
            live += 1
        elif state == _TOMB:
            live, tombs = live + 1, tombs - 1
        # else: an expired USED slot taken over; live unchanged
        self._write(reuse, d, exp, value)
        self._note_expiry(exp)
        _LIVE_TOMBS.pack_into(self._mm, _OFF_LIVE, live, tombs)

    def _rebuild(self, t: float) -> None:
        """Rehash in place, dropping tombstones and expired keys."""
        mm = self._mm
        q, f = self._q, self._f
        keep: list[tuple[tuple[int, int], float, float]] = []
        min_exp = float("inf")
        for i in range(self.slots):
            b = _WORDS_HEADER + i * _WORDS_SLOT
            exp = float(f[b + 3])
            if int(q[b]) & 0xFF == _USED and (exp == 0.0 or exp > t):
                keep.append(((int(q[b + 1]), int(q[b + 2])), exp, float(f[b + 4])))
                if exp != 0.0 and exp < min_exp:
                    min_exp = exp
        mm[_HEADER_SIZE:] = bytes(self.slots * _SLOT_SIZE)
        mask = self._mask
        for kd, exp, val in keep:
            i = kd[0] & mask
            while self._state(i) != _EMPTY:
                i = (i + 1) & mask
            self._write(i, kd, exp, val)
        _LIVE_TOMBS.pack_into(mm, _OFF_LIVE, len(keep), 0)
        _F64.pack_into(mm, _OFF_MINEXP, min_exp)

    @staticmethod
    def _expiry(ttl: float | None, t: float) -> float:
        return t + ttl if ttl else 0.0

    def _set(self, d: tuple[int, int], value: float, ttl: float | None, t: float) -> None:
        i, _, _ = self._find(d, t)
        if i >= 0:
            exp = self._expiry(ttl, t)
            self._write(i, d, exp, value)
            self._note_expiry(exp)
        else:
            self._insert(d, self._expiry(ttl, t), value, t)

    def _incr(self, d: tuple[int, int], delta: float, init: float | None, ttl: float | None, t: float) -> float:
        return self._incr_exp(d, delta, init, ttl, t)[0]

    def _incr_exp(self, d: tuple[int, int], delta: float, init: float | None, ttl: float | None,
                  t: float) -> tuple[float, float]:
        """The new value and the key's expiry (0.0: none)."""
        i, _, expired = self._find(d, t)
        if i >= 0 and not expired:
            # the common case (a live counter): read its expiry and value, write the value back
            b = _WORDS_HEADER + i * _WORDS_SLOT
            f = self._f
            val = float(f[b + 4]) + delta
            f[b + 4] = val
            return val, float(f[b + 3])
        if init is None:
            raise KeyError("not found")
        val = init + delta
        exp = self._expiry(ttl, t)
        if i >= 0:  # expired: restart it in place
            self._write(i, d, exp, val)
            self._note_expiry(exp)
        else:
            self._insert(d, exp, val, t)
        return float(val), exp

    def _delete(self, d: tuple[int, int], t: float) -> None:
        i, _, _ = self._find(d, t)
        if i < 0:
            return
        b = _WORDS_HEADER + i * _WORDS_SLOT
        q, f = self._q, self._f
        q[b + 1] = q[b + 2] = 0
        f[b + 3] = f[b + 4] = 0.0
        q[b] = _TOMB
        live, tombs = _LIVE_TOMBS.unpack_from(self._mm, _OFF_LIVE)
        _LIVE_TOMBS.pack_into(self._mm, _OFF_LIVE, live - 1, tombs + 1)


_open: dict[tuple[str, str], SharedDict] = {}


def open_dict(name: str, *, capacity: int = 65536, ns: str | None = None) -> SharedDict:
    """The process-wide handle of dict ``name`` (opened, and created if needed, once)."""
    nsv = ns if ns is not None else namespace()
    d = _open.get((nsv, name))
    if d is None:
        d = _open[(nsv, name)] = SharedDict(name, capacity=capacity, ns=nsv)
    return d


def remove_namespace(ns: str) -> list[str]:
    """Remove every dict (and its semaphore) of namespace ``ns``: for an explicit
    ``MESHGATE_SHM_NS``, which :func:`cleanup` leaves alone.  Returns the removed paths."""
    prefix = f"meshgate-{_SAFE.sub('_', ns)}-"
    return _remove(lambda fn: fn.startswith(prefix))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(pid: int | None = None) -> list[str]:
    """Remove the dicts of the gateway whose supervisor is ``pid`` (default: this process).

    The supervisor calls this once at exit.  It also sweeps files left by supervisors
    that died without cleaning up (killed with SIGKILL): their pid is gone, or was
    reused by a process with another start time.  Returns the removed paths."""
    me = os.getpid() if pid is None else pid
    mine = f"meshgate-{me}-{_start_time(me)}-"

    def ours(fn: str) -> bool:   # this gateway's, or a dead gateway's
        if fn.startswith(mine):
            return True
        parts = fn.split("-", 3)
        if len(parts) < 4 or not parts[1].isdigit():
            return False  # a namespace set by MESHGATE_SHM_NS: not ours to judge
        owner = int(parts[1])
        return not _alive(owner) or _start_time(owner) != parts[2]

    return _remove(ours)


def _remove(match: Callable[[str], bool]) -> list[str]:
    """Unlink the dict files whose name ``match`` accepts and their semaphores
    (/dev/shm/sem.<file name> on Linux, the orphans of files already gone included), and close
    this process's handles on them.  Returns the removed paths."""
    removed: list[str] = []
    d = shm_dir()
    try:
        names = [fn for fn in os.listdir(d) if fn.startswith("meshgate-") and match(fn)]
    except OSError:
        names = []
    for fn in names:
        try:
            os.unlink(os.path.join(d, fn))
            removed.append(os.path.join(d, fn))
        except OSError:
            pass
    for key in [k for k, v in _open.items() if v.path in removed]:
        _open.pop(key).close()
    ipc = _ipc()
    if ipc is not None:
        try:
            sems = {fn[4:] for fn in os.listdir("/dev/shm") if fn.startswith("sem.meshgate-") and match(fn[4:])}
        except OSError:
            sems = set()
        for fn in sems | set(names):
            try:
                ipc.unlink_semaphore("/" + fn)
            except (ipc.Error, OSError):
                pass
    return removed
