"""meshgate.shared: numeric dicts in shared memory, one state for several processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from meshgate.shared import SharedDict, SharedDictError, SharedDictFull, cleanup, namespace, open_dict, remove_namespace, shm_dir
from meshgate.shared import dict as shd

SRC = str(Path(__file__).resolve().parents[3] / "src")


def python_ok(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; it must succeed: its output lines."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.fixture
def ns():
    n = f"t{uuid.uuid4().hex[:12]}"
    yield n
    remove_namespace(n)
    remove_namespace(n + "other")
    assert not [f for f in os.listdir("/dev/shm") if f"meshgate-{n}" in f]   # files and semaphores


def test_incr_get_set_delete(ns):
    d = SharedDict("basic", capacity=16, ns=ns)
    assert d.get("a") is None
    with pytest.raises(KeyError):
        d.incr("a", 1)                     # no init: absent stays absent (ngx: "not found")
    assert d.incr("a", 1, 0) == 1
    assert d.incr("a", 2.5, 0) == 3.5      # init only applies to an absent key
    d.set("b", 7)
    assert d.get("b") == 7
    d.delete("b")
    assert d.get("b") is None
    d.delete("missing")                    # no error
    assert len(d) == 1


def test_second_opener_sees_the_same_table(ns):
    a = SharedDict("two", capacity=16, ns=ns)
    b = SharedDict("two", capacity=999, ns=ns)   # the creator's sizing wins
    assert b.capacity == 16 and b.slots == a.slots
    a.incr("k", 5, 0)
    assert b.get("k") == 5
    b.delete("k")
    assert a.get("k") is None


def test_names_and_namespaces_are_apart(ns):
    a = SharedDict("x", ns=ns)
    b = SharedDict("y", ns=ns)
    c = SharedDict("x", ns=ns + "other")
    a.set("k", 1)
    assert b.get("k") is None and c.get("k") is None


def test_expiry(ns, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(shd, "now", lambda: clock[0])
    d = SharedDict("ttl", capacity=16, ns=ns)
    assert d.incr("k", 1, 0, ttl=10) == 1
    clock[0] += 4
    assert d.incr("k", 1, 0, ttl=10) == 2       # an existing key keeps its expiry
    assert d.ttl("k") == pytest.approx(6)
    clock[0] += 6
    assert d.get("k") is None                   # expired exactly at its deadline
    assert d.ttl("k") is None
    assert d.incr("k", 1, 0, ttl=10) == 1       # starts over
    d.set("p", 3)                               # no ttl: never expires
    assert d.ttl("p") == 0.0
    clock[0] += 1e6
    assert d.get("p") == 3


def test_full_is_a_clear_error_and_expired_keys_make_room(ns, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(shd, "now", lambda: clock[0])
    d = SharedDict("cap", capacity=4, ns=ns)
    for i in range(4):
        d.set(f"k{i}", i, ttl=10 if i < 2 else None)
    with pytest.raises(SharedDictFull, match=r"shared dict 'cap' is full \(4 live keys\)"):
        d.incr("new", 1, 0)
    d.set("k3", 33)                             # updating an existing key still works
    clock[0] = 11                               # k0, k1 expired: their room is reusable
    d.set("n1", 1)
    d.set("n2", 2)
    with pytest.raises(SharedDictFull):
        d.set("n3", 3)
    d.delete("n1")
    d.set("n3", 3)
    assert [d.get(k) for k in ("k2", "k3", "n2", "n3", "k0")] == [2, 33, 2, 3, None]


def test_many_deletes_do_not_degrade(ns):
    """Tombstones are purged by in-place rebuilds; every key stays reachable."""
    d = SharedDict("churn", capacity=64, ns=ns)
    for rnd in range(50):
        for i in range(60):
            d.set(f"r{rnd}-{i}", i)
        for i in range(60):
            if i % 3:
                d.delete(f"r{rnd}-{i}")
        for i in range(0, 60, 3):
            assert d.get(f"r{rnd}-{i}") == i
        for i in range(0, 60, 3):
            d.delete(f"r{rnd}-{i}")
    assert len(d) == 0


def test_locked_makes_read_modify_write_atomic(ns):
    d = SharedDict("tx", ns=ns)
    with d.locked() as tx:
        assert tx.get("a") is None
        tx.set("a", 1, ttl=5)
        tx.incr("a", 1)
        assert tx.get("a") == 2
        assert 0 < (tx.ttl("a") or 0) <= 5
        tx.delete("a")
        assert tx.get("a") is None


HAMMER = r"""
import sys
sys.path.insert(0, {src!r})
from meshgate.shared import SharedDict
d = SharedDict("hammer", ns={ns!r})
n = int(sys.argv[1])
for _ in range(n):
    d.incr("total", 1, 0)
    with d.locked() as tx:           # a non-atomic-looking read-modify-write, made atomic
        tx.set("rmw", (tx.get("rmw") or 0) + 1)
print("ok")
"""


def test_processes_hammering_one_counter_get_an_exact_total(ns):
    procs, per = 6, 3000
    code = HAMMER.format(src=SRC, ns=ns)
    ps = [subprocess.Popen([sys.executable, "-c", code, str(per)], stdout=subprocess.PIPE) for _ in range(procs)]
    for p in ps:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == b"ok"
    d = SharedDict("hammer", ns=ns)
    assert d.get("total") == procs * per
    assert d.get("rmw") == procs * per


def test_namespace_is_the_parent_process_by_default(monkeypatch):
    monkeypatch.delenv("MESHGATE_SHM_NS", raising=False)
    assert namespace().startswith(f"{os.getppid()}-")
    monkeypatch.setenv("MESHGATE_SHM_NS", "abc")
    assert namespace() == "abc"


def test_worker_children_share_the_supervisor_namespace_and_cleanup_removes_it(tmp_path):
    """Children of one parent (as workers of the supervisor) open the same file; the
    parent's cleanup() removes it."""
    code = (f"import sys, os; sys.path.insert(0, {SRC!r}); os.environ.pop('MESHGATE_SHM_NS', None)\n"
            "from meshgate.shared import open_dict, cleanup\n"
            "import subprocess\n"
            "child = ('import sys, os; sys.path.insert(0, %r); os.environ.pop(\"MESHGATE_SHM_NS\", None);'\n"
            "         'from meshgate.shared import open_dict; print(open_dict(\"sup\").incr(\"k\", 1, 0))' % sys.path[0])\n"
            "outs = [subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, check=True).stdout"
            " for _ in range(3)]\n"
            "print(sorted(float(o) for o in outs))\n"
            "removed = cleanup()\n"
            "print(len([r for r in removed if r.endswith('-sup')]))\n")
    lines = python_ok(code)
    assert lines == ["[1.0, 2.0, 3.0]", "1"]


def test_cleanup_sweeps_files_of_dead_supervisors():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = os.path.join(shm_dir(), f"meshgate-{p.pid}-1-plugin-limit-count")
    Path(stale).write_bytes(b"x")
    try:
        assert stale in cleanup()
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.unlink(stale)


def test_open_dict_is_one_handle_per_process(ns):
    assert open_dict("h", ns=ns) is open_dict("h", ns=ns)


def test_cost_per_operation(ns, capsys):
    """Not a benchmark gate: prints the per-op cost (lock + probe) for the report, and
    fails only if it is absurd (> 200 us)."""
    d = SharedDict("cost", ns=ns)
    n = 20000
    t0 = time.perf_counter()
    for i in range(n):
        d.incr("k", 1, 0, ttl=60)
    per = (time.perf_counter() - t0) / n * 1e6
    with capsys.disabled():
        print(f"\nshared dict incr: {per:.2f} us/op")
    assert per < 200


DIE_HOLDING = r"""
import os, sys
sys.path.insert(0, {src!r})
from meshgate.shared import SharedDict
d = SharedDict("orphan", ns={ns!r})
d.incr("k", 1, 0)
d._acquire()          # killed inside an operation: the lock is never released
print("holding", flush=True)
os._exit(9)
"""


def test_a_lock_whose_holder_died_is_taken_over(ns, monkeypatch, caplog):
    """A process that dies holding the lock (the semaphore stays taken) does not stop the others:
    after LOCK_WAIT a waiter sees the holder's pid is gone and takes the lock over, once."""
    if shd._ipc() is None:
        pytest.skip("posix_ipc not installed: flock, released by the kernel")
    monkeypatch.setattr(shd, "LOCK_WAIT", 0.2)
    out = subprocess.run([sys.executable, "-c", DIE_HOLDING.format(src=SRC, ns=ns)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "holding" and out.returncode == 9
    d = SharedDict("orphan", ns=ns)
    t0 = time.monotonic()
    assert d.incr("k", 1, 0) == 2
    assert 0.15 < time.monotonic() - t0 < 5
    assert "which is gone; taking it over" in caplog.text
    t0 = time.monotonic()
    for _ in range(100):                      # and the lock works as before afterwards
        d.incr("k", 1, 0)
    assert d.get("k") == 102 and time.monotonic() - t0 < 1


def test_the_creator_chooses_the_lock_and_every_opener_follows(ns, monkeypatch):
    """A dict created without posix_ipc is locked with flock by every process, also one that
    has posix_ipc; one created with semaphores refuses a process without posix_ipc."""
    sem = shd._ipc()
    if sem is None:
        pytest.skip("posix_ipc not installed")
    monkeypatch.setattr(shd, "posix_ipc", None)
    a = SharedDict("flocked", ns=ns)
    assert a._sem is None
    monkeypatch.setattr(shd, "posix_ipc", sem)
    b = SharedDict("flocked", ns=ns)
    assert b._sem is None                     # follows the header, not its own means
    b.incr("n", 1, 0)
    assert a.get("n") == 1
    c = SharedDict("semaphored", ns=ns)
    assert c._sem is not None
    monkeypatch.setattr(shd, "posix_ipc", None)
    with pytest.raises(SharedDictError, match="locked with a POSIX semaphore and posix_ipc is not installed"):
        SharedDict("semaphored", ns=ns)


def test_cleanup_removes_the_semaphores_too(tmp_path):
    code = (f"import sys, os; sys.path.insert(0, {SRC!r}); os.environ.pop('MESHGATE_SHM_NS', None)\n"
            "from meshgate.shared import open_dict, cleanup, own_namespace\n"
            "d = open_dict('semclean', ns=own_namespace()); d.incr('k', 1, 0)\n"
            "name = 'sem.' + os.path.basename(d.path)\n"
            "print(name in os.listdir('/dev/shm'))\n"
            "cleanup()\n"
            "print(name in os.listdir('/dev/shm'), os.path.exists(d.path))\n")
    expect = ["True", "False False"] if shd._ipc() is not None else ["False", "False False"]
    assert python_ok(code) == expect


def test_a_worker_without_shared_counters_does_not_load_posix_ipc():
    code = (f"import sys; sys.path.insert(0, {SRC!r})\n"
            "import meshgate.shared, meshgate.plugins.builtin.limit_count\n"
            "print('posix_ipc' in sys.modules)\n"
            "meshgate.shared.open_dict('lazy', ns='lazy-' + str(__import__('os').getpid())).incr('k', 1, 0)\n"
            "print('posix_ipc' in sys.modules)\n"
            "meshgate.shared.remove_namespace('lazy-' + str(__import__('os').getpid()))\n")
    assert python_ok(code) == ["False", "True" if shd._ipc() is not None else "False"]


HOLD = r"""
import sys, time
sys.path.insert(0, {src!r})
from meshgate.shared import SharedDict
d = SharedDict("held", ns={ns!r})
d._acquire()
print("holding", flush=True)
time.sleep(0.6)
d._release()
"""


def test_a_signal_during_a_wait_for_the_lock_changes_nothing(ns):
    """A signal handled while a process waits for the lock (a worker's SIGHUP, SIGALRM here) does
    not fail the operation: it waits on for the live holder."""
    import signal
    if shd._ipc() is None:
        pytest.skip("posix_ipc not installed")
    d = SharedDict("held", ns=ns)
    d.incr("k", 1, 0)
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(src=SRC, ns=ns)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == b"holding"
        seen = []
        old = signal.signal(signal.SIGALRM, lambda *_: seen.append(1))
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            t0 = time.monotonic()
            assert d.incr("k", 1, 0) == 2
            assert seen and 0.3 < time.monotonic() - t0 < 5
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    finally:
        p.wait(timeout=10)


def test_a_new_dict_never_trusts_a_semaphore_left_behind(ns):
    """A semaphore of the same name left taken (a killed gateway with a fixed MESHGATE_SHM_NS) is
    replaced when the dict is created, so the first operation does not wait for a takeover."""
    ipc = shd._ipc()
    if ipc is None:
        pytest.skip("posix_ipc not installed")
    path = shd._path(ns, "stale")
    ipc.Semaphore(shd._sem_name(path), ipc.O_CREX, 0o600, 0).close()   # taken, nobody to release it
    d = SharedDict("stale", ns=ns)
    t0 = time.monotonic()
    assert d.incr("k", 1, 0) == 1
    assert time.monotonic() - t0 < 0.5


def test_no_semaphore_means_flock(ns, monkeypatch):
    """Where the system refuses a semaphore (no writable /dev/shm for it), the creator chooses
    flock and the dict works as before."""
    real = shd._ipc()
    if real is None:
        pytest.skip("posix_ipc not installed")

    class Refusing:   # posix_ipc on a system without a usable /dev/shm for semaphores
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def Semaphore(self, *args: object, **kw: object) -> object:
            raise real.PermissionsError("Permission denied")

    monkeypatch.setattr(shd, "posix_ipc", Refusing())
    d = SharedDict("nosem", ns=ns)
    assert d._sem is None
    assert d.incr("k", 1, 0) == 1 and SharedDict("nosem", ns=ns).incr("k", 1, 0) == 2
