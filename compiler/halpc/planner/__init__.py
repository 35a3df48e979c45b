"""Deciding the split: the Plan, the device programs it implies, the cost model and every strategy.

Propose only: nothing here writes ONNX files (that is `halpc.emit`).
"""
