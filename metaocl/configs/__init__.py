"""Typed config dataclasses, one module per experiment kind (no heavy imports here)."""
