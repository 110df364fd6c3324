"""edgeskd: Subclass Knowledge Distillation from training to real-time inference on an edge box.

Importing this package is cheap and needs neither torch nor a GPU: heavy libraries are
imported lazily by the modules that use them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
