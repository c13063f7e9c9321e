"""Pure data: kinds registry, resources, snapshots, schemas.  No asyncio, no I/O."""

from .kinds import KIND_NAMES, KINDS, Kind
from .snapshot import EMPTY, Resource, Snapshot

__all__ = ["KINDS", "KIND_NAMES", "Kind", "Resource", "Snapshot", "EMPTY"]
