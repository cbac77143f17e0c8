"""sceneparse: PSPNet/PSANet scene parsing from training to production."""

__version__ = "0.1.0"
