"""ollama-gpu: run `ollama serve` so that models land on the GPU, and say why when they do not."""

__version__ = "0.1.0"

__all__ = ["__version__"]
