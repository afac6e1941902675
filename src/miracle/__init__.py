"""miracle: compress neural networks to a few kilobytes with relative entropy coding.

    result = miracle.compress(model, train_split, budget="1.5KB", out="model.mrc")
    model = miracle.decompress("model.mrc", model=MyNet())
"""

from .compress import CompressResult, compress, decompress
from .config import CompressConfig
from .presets import PRESETS
from .training import accuracy

__version__ = "0.1.0"
__all__ = ["compress", "decompress", "accuracy", "CompressConfig", "CompressResult", "PRESETS"]
