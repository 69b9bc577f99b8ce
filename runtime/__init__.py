"""Live serving: a vLLM-compatible instance emulator, the router, launch and load tools.

Floors: ``runtime`` imports ``policies`` (the torch-free ONNX loader and heuristics) and
``sim`` only; never torch or stable-baselines3.
"""
