"""capkit: train an image captioner in PyTorch, export it to ONNX, caption with a torch-free runtime.

``capkit.Captioner`` is the runtime's entry point; it is imported on first use so that
``import capkit`` stays cheap and never pulls in ONNX Runtime for training-only work.
"""

__version__ = "0.1.0"
__all__ = ["Captioner", "__version__"]


def __getattr__(name: str):
    if name == "Captioner":
        from capkit.runtime import Captioner

        return Captioner
    raise AttributeError(f"module 'capkit' has no attribute {name!r}")
