"""Data, not code: recipes (one TOML per teacher->student pair), shipped as package data."""
