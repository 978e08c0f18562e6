"""Exports to formats other runtimes load (llama.cpp's GGUF). `newt.quantize` is the stage's entry point."""


# Here, below both `newt.quantize` and the exporters, so each raises it without importing the other.
class QuantizeError(ValueError):
    """A method that cannot run for this model, architecture or device; the message says what can."""
