"""The seed's Show-and-Tell captioner: CNN encoder -> image embedding as the first recurrent step.

The model is two pieces, because export turns each into one ONNX graph:
- :meth:`CaptionModel.image_step`: images -> the recurrent state after reading the image embedding;
- :meth:`CaptionModel.step`: (token, state) -> (logits, next state).
The teacher-forced :meth:`CaptionModel.forward` runs the same recurrent core over the whole
caption, so that stepping token by token gives the same logits.
"""

from __future__ import annotations

import math

import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torchvision

from capkit.models.config import CaptionModelConfig, ModelConfigError
from capkit.runtime.errors import first_line
from capkit.runtime.vocab import PAD_ID

RecurrentState = tuple[torch.Tensor, ...]  # (h,) for rnn/gru, (h, c) for lstm; each (layers, B, hidden)

DECODERS = {"lstm": nn.LSTM, "rnn": nn.RNN, "gru": nn.GRU}  # the recurrent core of each CaptionModelConfig.decoder


def _strip_classifier(backbone: nn.Module) -> int:
    """Replaces the backbone's classification head with Identity; returns its feature width."""
    if isinstance(getattr(backbone, "fc", None), nn.Linear):  # resnet, resnext, wide_resnet, regnet, googlenet
        width = backbone.fc.in_features
        backbone.fc = nn.Identity()
        return width
    head = getattr(backbone, "classifier", None)  # mobilenet, efficientnet, convnext, densenet
    if isinstance(head, nn.Linear):
        width = head.in_features
    elif isinstance(head, nn.Sequential):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("backbone classifier has no Linear layer")
        width = linears[0].in_features
        keep = [m for m in head if not isinstance(m, (nn.Linear, nn.Dropout, nn.Hardswish, nn.ReLU))]
        backbone.classifier = nn.Sequential(*keep) if keep else nn.Identity()  # convnext keeps its norm+flatten
        return width
    else:
        raise ValueError(f"don't know how to remove the classifier of {type(backbone).__name__}")
    backbone.classifier = nn.Identity()
    return width


def known_encoders() -> list[str]:
    """The torchvision classification models an encoder may name."""
    return torchvision.models.list_models(module=torchvision.models)


def check_encoder_name(name: Any) -> str:
    """``name`` if it is a torchvision classification model, else ModelConfigError (one line)."""
    if not isinstance(name, str) or name not in known_encoders():
        raise ModelConfigError(f"unknown encoder {name!r}; a torchvision classification model such as "
                               "resnet50, resnet18 or mobilenet_v3_small")
    return name


def state_dict_problem(expected: dict[str, Any], state: dict[str, Any], limit: int = 3) -> Optional[str]:
    """The first problems (up to ``limit``) of loading ``state`` into a module whose state dict is
    ``expected`` (values with a ``.shape``, real or on the meta device), as one line; None if it fits.
    Missing and unexpected keys, values that are not tensors and wrong shapes are each named."""
    problems = []
    for key, value in state.items():
        if not isinstance(key, str):
            problems.append(f"key {key!r} is not a name")
        elif key not in expected:
            problems.append(f"unexpected key {key!r}")
        elif not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, the model {tuple(expected[key].shape)}")
    problems += [f"missing key {key!r}" for key in expected if key not in state]
    if not problems:
        return None
    return "; ".join(problems[:limit]) + (f" (and {len(problems) - limit} more)" if len(problems) > limit else "")


def _offline_hint(name: str) -> str:
    return (f"to work offline, pass --encoder-weights FILE: a torchvision state dict of {name} "
            f"(torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), FILE) where there is network)")


def load_encoder_weights(weights_file: str | Path, backbone: nn.Module, name: str) -> None:
    """Loads ``--encoder-weights`` (a state dict of the full torchvision model, read with
    ``weights_only=True``) into ``backbone``; a file that is not one, or whose keys or shapes do not
    fit, is a one-line ModelConfigError naming the file and the problem."""
    label = f"--encoder-weights {weights_file}"
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning: the one-line error below says it
            warnings.simplefilter("ignore")
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise ModelConfigError(f"{label}: cannot read it ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # a pickle of Python objects, a truncated or foreign file
        reason = first_line(e)
        if "weights only" in reason.lower() or "weights_only" in reason:
            reason = "it holds Python objects, and capkit loads weights with weights_only=True (no code runs)"
        raise ModelConfigError(f"{label}: not a state dict of tensors ({type(e).__name__}: {reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelConfigError(f"{label}: holds a {type(state).__name__}, not a state dict of {name}")
    problem = state_dict_problem(backbone.state_dict(), state)
    if problem is not None:
        raise ModelConfigError(f"{label}: not a state dict of {name}: {problem}")
    backbone.load_state_dict(state)


def keep_stages(backbone: nn.Module, stages: Optional[int], width: int, name: str) -> int:
    """Cuts a backbone after its first ``stages`` stages, a stage being where the output stride doubles (a
    ResNet's ``layer1`` .. ``layer4`` end at strides 4 to 32; a MobileNet's or EfficientNet's ``features``
    blocks are kept up to the last one at stride 2 ** (stages + 1)); returns the feature width of the last
    part kept (None: all, ``width`` as it is)."""
    if stages is None:
        return width
    layers = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Sequential) for layer in layers):
        for i in range(stages, 4):
            setattr(backbone, f"layer{i + 1}", nn.Identity())
        return _out_channels(layers[stages - 1])
    blocks = getattr(backbone, "features", None)
    if not isinstance(blocks, nn.Sequential):
        raise ModelConfigError(f"backbone_stages needs a ResNet (layer1 .. layer4) or a backbone whose blocks are a "
                               f"`features` sequence (mobilenet, efficientnet ...); {name} is neither")
    stride, kept = 1, 0
    for block in blocks:
        stride *= math.prod(_stride(m) for m in block.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)))
        if stride > 2 ** (stages + 1):
            break
        kept += 1
    if kept == len(blocks):
        return width
    backbone.features = blocks[:kept]
    return _out_channels(backbone.features)


def _stride(layer: nn.Module) -> int:
    stride = layer.stride
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)


def _out_channels(part: nn.Module) -> int:
    """The output channels of a part of a CNN: those of its last batch norm, else of its last convolution."""
    norms = [m.num_features for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1] if norms else [m.out_channels for m in part.modules() if isinstance(m, nn.Conv2d)][-1]


def keep_grid(backbone: nn.Module, grid: int, width: int, name: str) -> int:
    """Makes the backbone pool its last feature map to ``grid`` x ``grid`` cells instead of one (its flatten
    then keeps every cell's features apart); returns the new feature width."""
    if grid == 1:
        return width
    if not isinstance(getattr(backbone, "avgpool", None), nn.AdaptiveAvgPool2d):
        raise ModelConfigError(f"image_grid {grid} needs a backbone that ends in adaptive average pooling "
                               f"(resnet, mobilenet, efficientnet ...); {name} does not")
    backbone.avgpool = GridPool(grid)
    return width * grid * grid


class GridPool(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling to ``grid`` x ``grid`` cells that exports to ONNX for any map size: where the
    grid does not divide the map (ONNX export supports only that case; e.g. a 2 x 2 map of a 32-pixel image
    at stride 16, pooled to 4 x 4), the same bins as PyTorch's are averaged by two matrix products."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, grid, grid)
        grid = self.output_size if isinstance(self.output_size, int) else self.output_size[0]
        h, w = int(x.shape[-2]), int(x.shape[-1])  # static in an exported graph (its crop is fixed)
        if h % grid == 0 and w % grid == 0:
            return super().forward(x)
        return bin_means(h, grid, x) @ x @ bin_means(w, grid, x).T  # (grid, H) @ (N, C, H, W) @ (W, grid)


def bin_means(size: int, cells: int, like: torch.Tensor) -> torch.Tensor:
    """(cells, size): row i averages adaptive pooling's bin i, [floor(i size / cells), ceil((i + 1) size / cells))."""
    weights = torch.zeros(cells, size, dtype=like.dtype, device=like.device)
    for i in range(cells):
        start, end = (i * size) // cells, -(-(i + 1) * size // cells)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def build_backbone(name: str, pretrained: bool = False, weights_file: Optional[str | Path] = None) -> tuple[nn.Module, int]:
    """A torchvision backbone without its classifier, and its feature width.

    ``pretrained`` asks torchvision's weights API for the backbone's DEFAULT ImageNet weights (a
    download on first use: without network that is a one-line ModelConfigError saying how to work
    offline); ``weights_file`` loads a local state dict of the full torchvision model
    (``weights_only=True``) instead. Every failure is a ModelConfigError (a CapkitError) of one line.
    """
    check_encoder_name(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained and weights_file is None else None
    try:
        backbone = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a bad download a RuntimeError
        if weights is None:
            raise
        reason = first_line(e)
        raise ModelConfigError(f"--pretrained: could not get {name}'s ImageNet weights ({type(e).__name__}: "
                               f"{reason}); {_offline_hint(name)}") from None
    if weights_file is not None:
        load_encoder_weights(weights_file, backbone, name)
    width = _strip_classifier(backbone)
    return backbone, width


FRESH_BN_MOMENTUM = 0.1  # PyTorch's default; the ResNets use it already


def fresh_batch_norm_momentum(backbone: nn.Module) -> None:
    """Batch norm of a backbone trained from scratch follows its batches at FRESH_BN_MOMENTUM at least.
    torchvision builds MobileNetV3 and EfficientNet with momentum 0.01, tuned for ImageNet's long runs:
    over a few thousand steps the running statistics that eval mode uses then stay near their
    initial 0 and 1, and a model that trains well scores badly in eval mode (validation loss far above
    training loss)."""
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, FRESH_BN_MOMENTUM)


class ImageEncoder(nn.Module):
    """CNN backbone (classifier removed) -> Linear to the embedding width (-> BatchNorm1d)."""

    def __init__(self, config: CaptionModelConfig, weights_file: Optional[str | Path] = None):
        super().__init__()
        self.backbone, width = build_backbone(config.encoder, config.pretrained, weights_file)
        width = keep_stages(self.backbone, config.backbone_stages, width, config.encoder)
        self.feature_dim = keep_grid(self.backbone, config.image_grid, width, config.encoder)
        if not (config.pretrained or weights_file):
            fresh_batch_norm_momentum(self.backbone)
        projection = [nn.Linear(self.feature_dim, config.embed_dim)]
        if config.project_norm:
            projection.append(nn.BatchNorm1d(config.embed_dim))
        self.project = nn.Sequential(*projection)
        self.frozen = config.freeze_encoder
        if self.frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its batch-norm statistics
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).flatten(1)  # (B, F)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(images))  # (B, E)


class CaptionModel(nn.Module):
    def __init__(self, config: CaptionModelConfig, encoder_weights: Optional[str | Path] = None):
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config, encoder_weights)
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.core = DECODERS[config.decoder](
            config.embed_dim, config.hidden_dim, num_layers=config.layers, batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_dim, config.vocab_size)
        if config.decoder == "lstm":
            with torch.no_grad():
                for name, bias in self.core.named_parameters():
                    if name.startswith("bias_ih"):  # gates i, f, g, o: the second quarter is the forget gate's
                        bias[config.hidden_dim:2 * config.hidden_dim].fill_(config.forget_bias)
        if config.freeze_embeddings:
            self.embed.weight.requires_grad_(False)

    # The recurrent core takes (h, c) for an LSTM and h alone otherwise; RecurrentState is always a tuple.
    def _run_core(self, inputs: torch.Tensor, state: Optional[RecurrentState]) -> tuple[torch.Tensor, RecurrentState]:
        if state is not None:
            state = state if self.config.decoder == "lstm" else state[0]
        out, next_state = self.core(inputs, state)  # (B, T, H)
        return out, (tuple(next_state) if isinstance(next_state, tuple) else (next_state,))

    def _split(self, state: RecurrentState) -> tuple[RecurrentState, Optional[torch.Tensor]]:
        """The recurrent core's state, and the image embedding (1, B, E) it carries with image_each_step."""
        if self.config.image_each_step:
            return state[:-1], state[-1]
        return state, None

    def state_from_image_embedding(self, image_embedding: torch.Tensor) -> RecurrentState:
        _, state = self._run_core(image_embedding.unsqueeze(1), None)  # image as step 0, from a zero state
        if self.config.image_each_step:
            state = (*state, image_embedding.unsqueeze(0))  # + (1, B, E): read again at every step
        return state  # each (L, B, H), then (1, B, E)

    def image_step(self, images: torch.Tensor) -> RecurrentState:
        """float32 (B, 3, H, W) normalised images -> the state after the image step."""
        return self.state_from_image_embedding(self.encoder(images))

    def step(self, tokens: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """int64 (B,) tokens and state -> logits (B, V) and the next state."""
        core, image = self._split(state)
        words = self.embed(tokens).unsqueeze(1)  # (B, 1, E)
        if image is not None:
            words = words + image[0].unsqueeze(1)  # (B, 1, E)
        out, core = self._run_core(words, core)  # (B, 1, H)
        return self.head(out[:, 0]), (*core, image) if image is not None else core  # (B, V)

    def forward(self, images: torch.Tensor, inputs: torch.Tensor, owners: Optional[torch.Tensor] = None,
                features: bool = False) -> torch.Tensor:
        """Teacher forcing: ``inputs`` (N, T) = <start> w1 .. wn (padded) -> logits (N, T, V) for w1 .. <end>.

        ``owners`` (N,) gives the image row of each caption, so that an image seen with several
        captions is encoded once (default: caption i belongs to image i). With ``features=True``
        ``images`` are the backbone's cached features (B, F) instead of pixels.
        """
        image_embedding = self.encoder.project(images) if features else self.encoder(images)  # (B, E)
        if owners is not None:
            image_embedding = image_embedding.index_select(0, owners)  # (N, E)
        core, image = self._split(self.state_from_image_embedding(image_embedding))  # each (L, N, H)
        words = self.embed(inputs)  # (N, T, E)
        if image is not None:
            words = words + image_embedding.unsqueeze(1)  # (N, T, E)
        out, _ = self._run_core(words, core)  # (N, T, H)
        return self.head(out)  # (N, T, V)


def greedy_choice(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> the greedy token argmax(logits) int64 (B,) and its log-softmax float64 (B,).

    The bulk of the work stays in the logits' dtype: ``rest``, the probability mass of the other
    tokens relative to the best one, is one exp and one sum over the vocabulary; only the (B,)
    result is widened, and ``-log1p(rest)`` keeps the precision of a confident model's
    log-probability (close to 0) that ``log(1 + rest)`` in float32 would round away. The exported
    step graph computes this too (``next_token``, ``next_logprob``), so a greedy loop never has to
    copy the vocabulary-sized logits out of the graph.
    """
    best, token = logits.max(dim=-1)  # (B,), (B,) first index of the maximum, as numpy's argmax
    others = torch.exp(logits - best.unsqueeze(-1)).scatter(-1, token.unsqueeze(-1), 0.0)  # (B, V)
    rest = others.sum(dim=-1).double()  # (B,)
    return token, -torch.log1p(rest)


def build_model(config: CaptionModelConfig, encoder_weights: Optional[str | Path] = None) -> CaptionModel:
    return CaptionModel(config, encoder_weights)
