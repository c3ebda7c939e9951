"""fastvit: fast training of Vision Transformers on small datasets."""

__version__ = "0.1.0"
