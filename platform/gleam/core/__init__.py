"""GLEAM-C: shared-encoder cross-view matching (model, loss, phases, training, evaluation)."""
