"""Plugin registry, loader, compiled per-route chains, and consumers (docs/plugins.md)."""

from .consumers import Consumer, ConsumerSet
from .runtime import (META_SCHEMA, PHASES, Answer, Pending, Plugin, PluginChain, PluginContext, PluginRegistry,
                      encode_body, schema_message, to_answer)

__all__ = ["PHASES", "Plugin", "PluginRegistry", "PluginChain", "PluginContext", "META_SCHEMA", "Pending", "Answer",
           "encode_body", "to_answer", "schema_message", "Consumer", "ConsumerSet"]
