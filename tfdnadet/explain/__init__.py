"""Evidence for an attribution: Grad-CAM heatmaps of any head on a named encoder block."""
