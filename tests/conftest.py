"""Shared fixtures.

export_kit: tiny captioners that were trained a few hundred steps, so that their captions differ
from image to image, and their exported bundles, built once per session and cached by configuration.
checkpoint: export_kit's LSTM captioner as a checkpoint file (written with the library's
checkpoint_payload, as a training run writes one).
kind, layers: each decoder kind in turn (KINDS), with the number of layers the seed gives it.
one_torch_thread: one PyTorch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``).

Tiers: ``pytest -m "not slow"`` is the fast tier (under a minute); tests marked ``slow`` build a
venv, train in subprocesses, run DDP or the exporters end to end.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

# tests/ is not a package: its shared modules (hostile_corpus.py ...) import by name, as when run as scripts
sys.path.insert(0, str(Path(__file__).parent))

# The CLI's last-resort guard turns an unexpected exception into one line; under test it re-raises
# instead (the traceback shows, and CliRunner records the exception), so reaching it fails the test.
os.environ["CAPKIT_DEBUG"] = "1"

KINDS = {"lstm": 1, "rnn": 2, "gru": 1}  # decoder kind -> layers (the seed's vanilla RNN has 2)
EXPORT_WORDS = ("a", "dog", "cat", "red", "blue", "green", "on", "the", "grass", "ball", "big", "small", "runs", "sits",
                "near", "two", "with", "black", "white", "tree", "car", "man", "sky", "under")


@dataclass
class ExportKit:
    """Tiny models (32x32 images, embed 16, hidden 32, 28 words) and their bundles, cached by configuration.

    A random-weight captioner says the same thing for every image, which makes caption
    comparisons weak. So each model is trained (projection, embedding, decoder; the random CNN
    stays as it is) to map 8 clusters of CNN features to 8 captions of 2 to 6 words; its
    greedy captions then differ between images (the tests assert it)."""

    kinds: ClassVar[dict[str, int]] = KINDS  # decoder kind -> layers, for loops over every kind
    root: Path
    vocab: Vocabulary = Vocabulary(SPECIAL_TOKENS + EXPORT_WORDS)
    spec: PreprocessSpec = PreprocessSpec(resize=32, crop=32)
    max_length: int = 10
    _models: dict[tuple, Any] = field(default_factory=dict)
    _bundles: dict[tuple, Any] = field(default_factory=dict)

    @cached_property
    def images(self) -> np.ndarray:
        """32 preprocessed synthetic images, float32 (32, 3, 32, 32)."""
        from capkit.export.checks import sample_images

        return sample_images(self.spec)

    def model(self, decoder: str = "lstm", layers: int = 1, encoder: str = "resnet18", **flags: Any):
        key = (decoder, layers, encoder, tuple(sorted(flags.items())))
        if key not in self._models:
            self._models[key] = self._train(decoder, layers, encoder, flags)
        return self._models[key]

    def bundle(self, decoder: str = "lstm", layers: int = 1, encoder: str = "resnet18", **flags: Any):
        from capkit.export import export_model

        key = (decoder, layers, encoder, tuple(sorted(flags.items())))
        if key not in self._bundles:
            folder = self.root / "-".join(map(str, [decoder, layers, encoder, *sorted(flags)]))
            self._bundles[key] = export_model(self.model(decoder, layers, encoder, **flags), self.vocab, self.spec,
                                              self.max_length, folder)
        return self._bundles[key]

    def checkpoint(self, path: Path, decoder: str = "lstm", layers: int = 1, encoder: str = "resnet18",
                   flags: dict[str, Any] | None = None, **extra: Any) -> Path:
        """Writes ``self.model(...)`` to ``path`` as a checkpoint (training/checkpoint.py's
        ``checkpoint_payload``: the keys a training run writes; ``extra`` adds run keys such as ``run_name``)."""
        from capkit.training.checkpoint import checkpoint_payload, save_checkpoint

        model = self.model(decoder, layers, encoder, **(flags or {}))
        return save_checkpoint(checkpoint_payload(model, self.vocab, self.spec, self.max_length, **extra), path)

    def _train(self, decoder: str, layers: int, encoder: str, flags: dict[str, Any], steps: int = 200):
        import torch

        from capkit.export.checks import synthetic_images
        from capkit.models import CaptionModel, CaptionModelConfig
        from capkit.runtime.preprocess import preprocess_batch

        torch.manual_seed(0)
        model = CaptionModel(CaptionModelConfig(vocab_size=len(self.vocab), encoder=encoder, embed_dim=16, hidden_dim=32,
                                                decoder=decoder, layers=layers, **flags)).eval()
        if flags.get("freeze_embeddings"):  # stands in for pretrained (GloVe-like) vectors: fixed, unit length
            with torch.no_grad():
                vectors = torch.randn(len(self.vocab), 16, generator=torch.Generator().manual_seed(1))
                model.embed.weight.copy_(vectors / vectors.norm(dim=1, keepdim=True))
        pixels = torch.from_numpy(preprocess_batch(synthetic_images(128, seed=1), self.spec))  # (N, 3, 32, 32)
        with torch.no_grad():
            features = model.encoder.features(pixels)  # (N, F)
        mean, scale = features.mean(0), features.std()
        z = (features - mean) / scale  # (N, F)
        planes = torch.randn(z.shape[1], 3, generator=torch.Generator().manual_seed(0))  # (F, 3)
        bits = (z @ planes > 0).long()  # (N, 3)
        clusters = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]  # (N,)
        rng = np.random.default_rng(5)
        templates = [[self.vocab.start_id, *rng.integers(4, len(self.vocab), 2 + c % 5).tolist(), self.vocab.end_id]
                     for c in range(8)]
        width = max(map(len, templates))
        captions = torch.tensor([templates[c] + [0] * (width - len(templates[c])) for c in clusters.tolist()])  # (N, T)
        params = [p for name, p in model.named_parameters() if not name.startswith("encoder.backbone") and p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        for _ in range(steps):
            logits = model(z, captions[:, :-1], features=True)  # (N, T-1, V)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(self.vocab)), captions[:, 1:].reshape(-1),
                                                     ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():  # fold the normalisation into the projection: the model now takes raw features
            linear = model.encoder.project[0]  # the Linear; a BatchNorm1d may follow it
            linear.weight.div_(scale)
            linear.bias.sub_(linear.weight @ mean)
        return model.eval()


@pytest.fixture(scope="session")
def export_kit(tmp_path_factory: pytest.TempPathFactory) -> ExportKit:
    pytest.importorskip("torch")
    return ExportKit(tmp_path_factory.mktemp("export-kit"))


@pytest.fixture(scope="module")
def checkpoint(export_kit: ExportKit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of export_kit's LSTM captioner (the model behind ``export_kit.bundle("lstm")``), run name "test"."""
    return export_kit.checkpoint(tmp_path_factory.mktemp("run") / "best.pt", "lstm", run_name="test")


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    """Each decoder kind in turn: a test that takes ``kind`` runs once per kind (or for the kinds it
    parametrizes ``kind`` with)."""
    return request.param


@pytest.fixture
def layers(kind: str) -> int:
    """The number of layers of ``kind``'s seed configuration (KINDS)."""
    return KINDS[kind]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One PyTorch intra-op thread for a module, restored after it. The tiny models here are as fast on
    one thread, and several crawl on a shared 2-core machine (OpenMP workers spin against other
    processes: training and export 10-50x slower under load)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read, closed): for a
    process group's MASTER_PORT, so that parallel runs do not collide on a fixed port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
