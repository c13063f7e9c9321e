"""Pure data: kinds registry, resources, snapshots, schemas.  No asyncio, no I/O."""

from typing import TYPE_CHECKING, Any

from .describe import schema_type_name, short_value, type_name
from .kinds import KIND_NAMES, KINDS, MESH_KINDS, Kind, is_kind
from .schemas import SCHEMAS, schema_for
from .snapshot import EMPTY, Resource, Snapshot

if TYPE_CHECKING:
    from .validate import check_references, json_pointer, normalize_id, validate_item

__all__ = [
    "KINDS",
    "KIND_NAMES",
    "MESH_KINDS",
    "is_kind",
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
    "type_name",
    "schema_type_name",
    "short_value",
]

# The validators pull in jsonschema (~0.15 s to import); processes that only consume
# snapshots (workers compiling routers) should not pay for it.
_LAZY = {"validate_item", "check_references", "normalize_id", "json_pointer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import validate

        return getattr(validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
