"""Sans-IO HTTP/1.1 pieces: the parsed request, path normalisation, variables."""

from .path import Target, normalize_path, parse_target
from .request import HOP_BY_HOP, Request, split_fields

__all__ = ["Request", "HOP_BY_HOP", "split_fields", "Target", "normalize_path", "parse_target"]
