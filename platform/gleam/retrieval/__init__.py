"""Retrieval: embedding images and galleries (``embed``), the faiss gallery index (``index``),
building an index from shards (``build``) and offline batch localization (``batch``).

Import the submodules directly; this package imports nothing heavy on its own.
"""
