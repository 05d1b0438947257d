"""The encoder (backbone), heads, and the detector that holds one backbone and named heads."""

# Importing the modules registers every backbone and serialisable class that saved models name.
from tfdnadet.models import baselines, encoder, ensemble, heads, two_domain  # noqa: E402,F401
