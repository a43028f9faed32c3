"""osplab: a notebook-first, reproducible research kit for text-to-video diffusion.

Importing the package has no side effects; the heavy modules (torch models, metrics) are
imported by the code that needs them.
"""

__version__ = "0.1.0"
