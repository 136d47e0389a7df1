"""lookuplens: next-token neurons and the attention heads that look up context for them.

Importing the package does nothing but define names: no downloads, no global state.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
