"""xDS → the one model, pure code (no I/O, no asyncio)."""
