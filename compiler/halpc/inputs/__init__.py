"""What the user brings, loaded and validated: the ONNX model, the cluster file, device profiles.

The lowest layer: it knows files and their schemas, nothing of trunks, plans or bundles.
"""
