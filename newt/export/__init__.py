"""Exports to formats other runtimes load (llama.cpp's GGUF). `newt.quantize` is the stage's entry point."""
