"""vidlab: video and video-language representation learning on one shared pipeline."""

__version__ = "0.1.0"
