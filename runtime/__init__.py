"""The torch-free runtime: numpy, Pillow and ONNX Runtime only."""
