"""Exporting trained networks for serving: ONNX files checked against PyTorch with onnxruntime."""
