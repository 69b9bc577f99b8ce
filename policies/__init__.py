"""Routing policies: heuristics, SB3 training glue, ONNX export and the onnxruntime loader.

Importing this package must stay cheap and torch-free (the live router imports the loader);
modules that need torch or stable-baselines3 import them themselves.
"""
