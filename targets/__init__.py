"""Data, not code: target profiles (one TOML per target), shipped as package data."""
