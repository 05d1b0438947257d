"""The encoder (backbone), heads, and the detector that holds one backbone and named heads."""
