"""The torch-free runtime: numpy, Pillow and ONNX Runtime only.

    from capkit.runtime import Captioner
    print(Captioner("runs/latest/bundle").caption("dog.jpg").text)

Nothing here imports torch, torchvision or onnx; ONNX Runtime itself is imported when a
Captioner (or ``OnnxInference``) is first built, so ``import capkit.runtime`` stays cheap.
"""

from capkit.runtime.bundle import MODEL_ENV, Bundle, default_bundle, load_bundle
from capkit.runtime.captioner import Caption, Captioner
from capkit.runtime.decoding import DecodingOptions, DecodingOptionsError, DecodingResult, Inference, decode
from capkit.runtime.errors import CapkitError
from capkit.runtime.image_files import ImageError, ImageLimitError, load_image
from capkit.runtime.limits import DEFAULT_LIMITS, LimitError, Limits
from capkit.runtime.manifest import BundleError, Manifest
from capkit.runtime.preprocess import PreprocessSpec, preprocess
from capkit.runtime.vocab import Vocabulary

__all__ = [
    "DEFAULT_LIMITS", "MODEL_ENV", "Bundle", "BundleError", "CapkitError", "Caption", "Captioner", "DecodingOptions",
    "DecodingOptionsError", "DecodingResult", "ImageError", "ImageLimitError", "Inference", "LimitError", "Limits",
    "Manifest", "OnnxInference",
    "PreprocessSpec", "Vocabulary", "decode", "default_bundle", "load_bundle", "load_image", "preprocess",
]


def __getattr__(name: str):
    if name == "OnnxInference":  # imports onnxruntime: only on first use
        from capkit.runtime.onnx_inference import OnnxInference

        return OnnxInference
    raise AttributeError(f"module 'capkit.runtime' has no attribute {name!r}")
