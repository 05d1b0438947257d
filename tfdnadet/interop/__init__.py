"""Interoperability with the official DNA-Det release (PyTorch checkpoints, annotation files)."""
