"""`capkit train`: a thin command over :func:`capkit.training.train.train`.

Every default comes from :class:`~capkit.training.config.TrainConfig` or
:class:`~capkit.models.config.CaptionModelConfig`. The run folder goes to stdout (``--json``: the
summary), progress and the per-epoch log to stderr. torch is imported inside the command only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import click
from click.core import ParameterSource

from capkit.cli.options import config_option, device_option, echo_json, json_option, status, user_errors
from capkit.models.config import DECODER_KINDS, MAX_GRID, MAX_STAGES, CaptionModelConfig
from capkit.models.presets import PRESETS
from capkit.runtime.vocab import MIN_VOCAB_SIZE
from capkit.training.config import LR_SCHEDULES, TrainConfig

MODEL_FIELDS = {f.name for f in dataclasses.fields(CaptionModelConfig)} - {"vocab_size"}
ENCODER_CUT = ("backbone_stages", "image_grid")  # a preset's cut of its own backbone: not applied to a typed --encoder


def typed_on_command_line(name: str) -> bool:
    """Whether the option ``name`` of the running command was given by the user (not a default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


@click.command("train")
@config_option(TrainConfig, "data", help="Dataset: a COCO/Karpathy/Flickr/JSONL/CSV source [default: synthetic].")
@config_option(TrainConfig, "image_dir", help="Image folder, for sources that need one.")
@config_option(TrainConfig, "preset", type=click.Choice(list(PRESETS)),
               help="Model sizes by name: " + "; ".join(f"{k}: {v.summary}" for k, v in PRESETS.items())
               + ". Model options typed beside it win [default: default].")
@config_option(CaptionModelConfig, "encoder", help="torchvision backbone (the seed report's: resnet50).")
@config_option(CaptionModelConfig, "pretrained", is_flag=True,
               help="Start from torchvision's ImageNet weights (downloads them; offline: --encoder-weights FILE).")
@config_option(TrainConfig, "encoder_weights", type=click.Path(exists=True, dir_okay=False),
               help="Local weights file for the backbone (a torchvision state dict).")
@config_option(CaptionModelConfig, "freeze_encoder", is_flag=True, help="Train only the projection and the decoder.")
@config_option(TrainConfig, "cache_features", is_flag=True, help="With --freeze-encoder: compute backbone features once.")
@config_option(CaptionModelConfig, "decoder", type=click.Choice(DECODER_KINDS))
@config_option(CaptionModelConfig, "layers", type=click.IntRange(1))
@config_option(CaptionModelConfig, "embed_dim", type=click.IntRange(1))
@config_option(CaptionModelConfig, "hidden_dim", type=click.IntRange(1))
@config_option(CaptionModelConfig, "dropout", type=click.FloatRange(0, 1))
@config_option(TrainConfig, "embeddings", type=click.Path(exists=True, dir_okay=False),
               help="Pretrained word vectors (GloVe / word2vec text format).")
@config_option(CaptionModelConfig, "freeze_embeddings", is_flag=True)
@config_option(CaptionModelConfig, "image_each_step", "--image-each-step/--image-first-only",
               help="Add the image embedding to every step's input, or give it as the first step only (the seed's).")
@config_option(CaptionModelConfig, "backbone_stages", type=click.IntRange(1, MAX_STAGES),
               help="Residual stages of a ResNet backbone kept [default: the preset's; all four without one].")
@config_option(CaptionModelConfig, "image_grid", type=click.IntRange(1, MAX_GRID),
               show_default=False, help="Pool the backbone's last feature map to N x N cells kept apart (1: global "
                                        "pooling, the seed's) [default: the preset's; 1 without one].")
@config_option(CaptionModelConfig, "forget_bias", type=float,
               help="LSTM forget-gate bias at init (of bias_ih; 0 sets it to 0, not to PyTorch's small random values).")
@config_option(TrainConfig, "epochs", type=click.IntRange(1),
               help="Passes over the training images [default: 8, or more for at least 960 optimiser steps].")
@config_option(TrainConfig, "batch_size", type=click.IntRange(1))
@config_option(TrainConfig, "captions_per_image", type=click.IntRange(1),
               help="Captions each image brings per epoch: a fresh random subset each epoch.")
@config_option(TrainConfig, "lr", type=float)
@config_option(TrainConfig, "weight_decay", type=float, help="L2 penalty.")
@config_option(TrainConfig, "lr_schedule", type=click.Choice(LR_SCHEDULES))
@config_option(TrainConfig, "warmup_epochs", type=click.FloatRange(0), help="Linear learning-rate warm-up, in epochs.")
@config_option(TrainConfig, "min_count", type=click.IntRange(1), help="Vocabulary threshold.")
@config_option(TrainConfig, "max_length", type=click.IntRange(2))
@config_option(TrainConfig, "bleu_images", type=click.IntRange(0),
               help="Validation images captioned after each epoch for a greedy BLEU-4 (0: off).")
@config_option(TrainConfig, "teacher", type=click.Path(exists=True),
               help="Distil from this trained run (or checkpoint): its word distributions at every step become soft "
                    "targets beside the references. Same data and preprocessing; any model.")
@config_option(TrainConfig, "distill_temperature", type=click.FloatRange(0, min_open=True),
               help="With --teacher: softmax temperature of both distributions.")
@config_option(TrainConfig, "distill_weight", type=click.FloatRange(0, 1),
               help="With --teacher: the soft targets' share of the loss.")
@config_option(TrainConfig, "patience", type=click.IntRange(1), help="Early-stopping patience in epochs.")
@config_option(TrainConfig, "image_size", type=click.IntRange(16),
               help="Input side [default: the backbone's; 64 on synthetic].")
@config_option(TrainConfig, "synthetic_count", type=click.IntRange(10))
@config_option(TrainConfig, "num_workers", "--workers", type=click.IntRange(0))
@config_option(TrainConfig, "seed", type=int)
@config_option(TrainConfig, "max_steps", type=click.IntRange(1), help="Stop after this many steps.")
@config_option(TrainConfig, "out", help="Runs folder.")
@config_option(TrainConfig, "name", help="Run name [default: encoder-decoder-time].")
@click.option("--resume", type=click.Path(exists=True), default=None, help="Continue a run from its last checkpoint.")
@config_option(TrainConfig, "progress", "--progress/--no-progress")
@device_option
@json_option
def train(resume: Optional[str], as_json: bool, **options: Any) -> None:
    """Train a captioning model (no arguments: a small model on the synthetic dataset).

    With --resume, the run keeps the configuration it was started with; only the options typed on
    this command line change it (epochs, patience, max-steps, device, progress, workers, bleu-images)."""
    model_options = {name: options.pop(name) for name in MODEL_FIELDS & options.keys()}
    typed = [name for name in [*options, *model_options] if typed_on_command_line(name)]
    with user_errors():
        from capkit.training.train import train as run_training

        if resume is not None and set(typed) & MODEL_FIELDS:
            name = sorted(set(typed) & MODEL_FIELDS)[0]
            raise click.UsageError(f"--{name.replace('_', '-')} cannot change when resuming (the model is the run's)")
        preset = PRESETS[options["preset"] or "default"]
        cut = ENCODER_CUT if "encoder" in typed else ()  # a typed backbone is used whole unless told otherwise
        model_options.update({k: v for k, v in preset.model.items() if k not in typed and k not in cut})
        model_config = CaptionModelConfig(vocab_size=MIN_VOCAB_SIZE, **model_options)  # train() sets the vocabulary's
        result = run_training(TrainConfig(**options), model_config, resume=resume, status=status,
                              overrides=typed if resume is not None else None)
    summary = {"run": str(result.run_dir), "epochs": result.epochs, "best_val_loss": result.best_val_loss,
               "stopped": result.stopped, "skipped_images": result.skipped_images, "history": result.history,
               "overridden": result.overridden, "warnings": result.warnings}
    echo_json(summary) if as_json else click.echo(str(result.run_dir))


__all__ = ["train"]
