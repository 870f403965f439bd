"""autoprune: search which channels of a trained network to remove under a resource budget."""

__version__ = "0.1.0"
