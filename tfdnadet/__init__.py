"""tfdnadet: attribute images to the generator architecture that made them (DNA-Det, AAAI 2022)."""

__version__ = "0.1.0"
