"""Storage component plugin (reference storage engine)."""
