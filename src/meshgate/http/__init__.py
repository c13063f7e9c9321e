"""Sans-IO HTTP/1.1 pieces: the parsed request, path normalisation, variables."""

from .request import FIELD_RE, HOP_BY_HOP, Request

__all__ = ["Request", "HOP_BY_HOP", "FIELD_RE"]
