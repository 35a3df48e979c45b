"""halpc-stub: runs one device's part of a halpc bundle with ONNX Runtime; never imports the compiler."""
