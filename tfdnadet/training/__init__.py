"""Trainers: stage 2 (architecture classification) and the shared patchwise contrastive loop."""
