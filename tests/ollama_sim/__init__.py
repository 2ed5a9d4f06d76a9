"""Ollama simulator: a TEST DOUBLE of `ollama serve` (generations B, C, D) for end-to-end tests of ollama-gpu.

It is not Ollama. It reproduces Ollama's process tree, runner argv, environment rewriting and log lines from
`../shared/reference/ollama-internals.md` and the real 0.32.15 fixtures, and its runners dlopen real (mock) libraries so
that faults are physical. Start it through the `ollama` script beside this file or an install made by `install.py`.
"""
