"""`capkit data`, `capkit train`, `capkit eval`: thin commands over capkit.training.

torch is imported inside the commands only, so that `capkit caption` never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from capkit.cli_options import device_option, echo_json, json_option, status, user_errors
from capkit.training.synthetic import DEFAULT_COUNT


@click.group()
def data() -> None:
    """Datasets: generate the built-in synthetic one."""


@data.command("synthetic")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write [default: the cache folder that `capkit train` uses].")
@click.option("--count", type=click.IntRange(10), default=DEFAULT_COUNT, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(32), default=64, show_default=True)
@json_option
def synthetic(out: Optional[Path], count: int, seed: int, image_size: int, as_json: bool) -> None:
    """Write the synthetic dataset: PNG images and COCO-format captions with train/val/test splits."""
    from capkit.training.data import synthetic_dir
    from capkit.training.datasets import describe, load_dataset
    from capkit.training.synthetic import generate_synthetic

    with user_errors():
        folder = generate_synthetic(out or synthetic_dir(count, seed, image_size), count=count, seed=seed,
                                    image_size=image_size)
        summary = describe(load_dataset(folder))
    echo_json({"path": str(folder), "summary": summary}) if as_json else click.echo(str(folder))
    status(summary)


@click.command()
@click.option("--data", default=None, help="Dataset: a COCO/Karpathy/Flickr/JSONL/CSV source [default: synthetic].")
@click.option("--images", default=None, help="Image folder, for sources that need one.")
@click.option("--encoder", default="resnet18", show_default=True, help="torchvision backbone (the seed's: resnet50).")
@click.option("--pretrained", is_flag=True, help="Start from torchvision's ImageNet weights (downloads them).")
@click.option("--encoder-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local weights file for the backbone (a torchvision state dict).")
@click.option("--freeze-encoder", is_flag=True, help="Train only the projection and the decoder.")
@click.option("--cache-features", is_flag=True, help="With --freeze-encoder: compute backbone features once.")
@click.option("--decoder", type=click.Choice(["lstm", "rnn", "gru"]), default="lstm", show_default=True)
@click.option("--layers", type=click.IntRange(1), default=1, show_default=True)
@click.option("--embed-dim", type=click.IntRange(1), default=300, show_default=True)
@click.option("--hidden-dim", type=click.IntRange(1), default=512, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--embeddings", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pretrained word vectors (GloVe / word2vec text format).")
@click.option("--freeze-embeddings", is_flag=True)
@click.option("--forget-bias", type=float, default=1.0, show_default=True,
              help="LSTM forget-gate bias at init (of bias_ih; 0 sets it to 0, not to PyTorch's small random values).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--captions-per-image", type=click.IntRange(1), default=2, show_default=True,
              help="Captions each image brings per epoch: a fresh random subset each epoch.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-5, show_default=True, help="L2 penalty.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--min-count", type=click.IntRange(1), default=1, show_default=True, help="Vocabulary threshold.")
@click.option("--max-length", type=click.IntRange(2), default=20, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=None, help="Early-stopping patience in epochs.")
@click.option("--image-size", type=click.IntRange(16), default=None, help="Input side [default: the backbone's; 64 on synthetic].")
@click.option("--synthetic-count", type=click.IntRange(10), default=DEFAULT_COUNT, show_default=True)
@click.option("--workers", "num_workers", type=click.IntRange(0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many steps.")
@click.option("--out", default="runs", show_default=True, help="Runs folder.")
@click.option("--name", default=None, help="Run name [default: encoder-decoder-time].")
@click.option("--resume", type=click.Path(exists=True), default=None, help="Continue a run from its last checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@json_option
def train(encoder, pretrained, freeze_encoder, decoder, layers, embed_dim, hidden_dim, dropout, freeze_embeddings, forget_bias,
          resume, as_json, **options) -> None:
    """Train a captioning model (no arguments: a small model on the synthetic dataset)."""
    from capkit.models import CaptionModelConfig
    from capkit.training.train import TrainConfig, train as run_training

    with user_errors():
        model_config = CaptionModelConfig(vocab_size=5, encoder=encoder, pretrained=pretrained,
                                          freeze_encoder=freeze_encoder, embed_dim=embed_dim, hidden_dim=hidden_dim,
                                          decoder=decoder, layers=layers, dropout=dropout,
                                          freeze_embeddings=freeze_embeddings, forget_bias=forget_bias)
        result = run_training(TrainConfig(**options), model_config, resume=resume, log=status)
    summary = {"run": str(result.run_dir), "epochs": result.epochs, "best_val_loss": result.best_val_loss,
               "stopped": result.stopped, "skipped_images": result.skipped_images, "history": result.history}
    echo_json(summary) if as_json else click.echo(str(result.run_dir))


def _parse_temperatures(value: str) -> list[float]:
    try:
        return [float(t) for t in value.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@click.command("eval")
@click.argument("run_or_checkpoint", required=False)
@click.option("--model", "bundle", type=click.Path(), default=None, help="Evaluate an exported bundle (ONNX runtime).")
@click.option("--data", default=None, help="Dataset [default: the one the model was trained on].")
@click.option("--images", default=None, help="Image folder, for sources that need one.")
@click.option("--split", default="test", show_default=True)
@click.option("--temps", default="0", show_default=True, help="Comma-separated temperatures, e.g. 0,0.1,0.2,0.7,1,1.5,2.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N images only.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@json_option
def eval_command(run_or_checkpoint, bundle, data, images, split, temps, seed, limit, batch_size, progress, device,
                 as_json) -> None:
    """BLEU-1..4 and CIDEr on a split, greedy and per temperature (the seed's Table 2)."""
    from capkit.training.datasets import load_dataset
    from capkit.training.evaluate import evaluate, format_table

    temperatures = _parse_temperatures(temps)
    with user_errors():
        inference, vocab, spec, max_length, source = _load_for_eval(run_or_checkpoint, bundle, device)
        source = data or source
        if not source:
            raise click.ClickException("the model does not record its dataset: pass --data")
        splits = load_dataset(source, images)
        if not splits.get(split):
            raise click.ClickException(f"{source}: split {split!r} is empty or missing")
        results = evaluate(inference, vocab, spec, splits[split], temperatures, seed=seed, max_length=max_length,
                           batch_size=batch_size, limit=limit, progress=progress, warn=status)
    status(f"{results[0].images} {split} images of {source}")
    if as_json:
        echo_json({"split": split, "data": source, "results": [r.to_dict() for r in results]})
    else:
        click.echo(format_table(results))


def _load_for_eval(run_or_checkpoint: Optional[str], bundle: Optional[str], device: str):
    """(inference, vocab, spec, max_length, dataset source) for a checkpoint or, with --model, a bundle."""
    if bundle is not None:
        from capkit.runtime.bundle import load_bundle
        from capkit.runtime.onnx_inference import OnnxInference

        loaded = load_bundle(bundle)
        manifest = loaded.manifest
        return (OnnxInference(loaded, device=device), manifest.vocab, manifest.preprocess, manifest.max_length,
                manifest.provenance.get("data_source"))
    from capkit.training.checkpoint import load_model
    from capkit.training.torch_inference import TorchInference
    from capkit.training.train import resolve_device

    torch_device = resolve_device(device)
    model, vocab, spec, payload = load_model(run_or_checkpoint, torch_device)
    return TorchInference(model, torch_device), vocab, spec, payload["max_length"], payload.get("data_source")
