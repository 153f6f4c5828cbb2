"""vqlab: discrete tokenization for multimodal models, in JAX/Flax."""

__version__ = "0.1.0"
