"""miracle: compress neural networks to a few kilobytes with relative entropy coding."""

__version__ = "0.1.0"
