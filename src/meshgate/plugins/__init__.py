"""Plugin registry, loader and compiled per-route chains."""

from .runtime import META_SCHEMA, PHASES, Plugin, PluginChain, PluginContext, PluginRegistry

__all__ = ["PHASES", "Plugin", "PluginRegistry", "PluginChain", "PluginContext", "META_SCHEMA"]
