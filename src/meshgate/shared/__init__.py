"""State shared by the worker processes of one gateway (DESIGN.md, "State shared by worker
processes"): numeric dicts in shared memory, as APISIX keeps rate-limit counters, connection
counts and breaker state in nginx shared dicts.

A leaf layer: imports nothing from meshgate but ``errors``.  The supervisor calls
:func:`cleanup` once at exit.
"""

from .dict import (SharedDict, SharedDictError, SharedDictFull, Txn, cleanup, namespace, now, open_dict,
                   own_namespace, remove_namespace, shm_dir)

__all__ = ["SharedDict", "SharedDictError", "SharedDictFull", "Txn", "open_dict", "cleanup", "namespace",
           "own_namespace", "remove_namespace", "shm_dir", "now"]
