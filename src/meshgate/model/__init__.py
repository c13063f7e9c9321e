"""Pure data: kinds registry, resources, snapshots, schemas.  No asyncio, no I/O."""

from .kinds import KIND_NAMES, KINDS, Kind
from .schemas import SCHEMAS, schema_for
from .snapshot import EMPTY, Resource, Snapshot
from .validate import check_references, json_pointer, normalize_id, validate_item

__all__ = [
    "KINDS",
    "KIND_NAMES",
    "Kind",
    "Resource",
    "Snapshot",
    "EMPTY",
    "SCHEMAS",
    "schema_for",
    "validate_item",
    "check_references",
    "normalize_id",
    "json_pointer",
]
