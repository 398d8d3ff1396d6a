"""Visualisation and I/O helpers (CoNSeP .mat, per-nucleus JSON/GeoJSON, overlays, atomic writes)."""
