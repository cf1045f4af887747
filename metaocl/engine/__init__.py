"""Training loops and evaluation (no dataset building here)."""
