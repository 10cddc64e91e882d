"""API component plugin (reference API server)."""
