"""GLEAM-X: the bilingual explaining side (query + satellite image + instruction -> explanation and verdict)."""
