"""Model shapes, the two-piece form (image step + one decoding step) against teacher forcing."""

import pytest
import torch

from capkit.models import CaptionModel, CaptionModelConfig, build_backbone

# conftest's one_torch_thread: tiny models are as fast on one thread, and several crawl on busy cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(decoder="lstm", layers=1, encoder="resnet18", **kw):
    torch.manual_seed(0)
    return CaptionModel(CaptionModelConfig(vocab_size=30, encoder=encoder, decoder=decoder, layers=layers,
                                           embed_dim=16, hidden_dim=24, **kw)).eval()


@pytest.mark.parametrize("each_step", [True, False], ids=["image-each-step", "image-first-only"])
@pytest.mark.parametrize("decoder, layers", [("lstm", 1), ("rnn", 2), ("gru", 1), ("lstm", 2)])
def test_shapes_and_stepwise_equals_teacher_forcing(decoder, layers, each_step):
    model = tiny(decoder, layers, image_each_step=each_step)
    images = torch.randn(3, 3, 32, 32)  # (B, 3, H, W)
    inputs = torch.randint(4, 30, (3, 6))  # (B, T)
    inputs[:, 0] = 1
    with torch.no_grad():
        full = model(images, inputs)  # (B, T, V)
        state = model.image_step(images)
        assert len(state) == len(model.config.state_names) == (2 if decoder == "lstm" else 1) + each_step
        assert all(s.shape == (layers, 3, 24) for s in state[:len(state) - each_step])
        if each_step:  # the image embedding rides along, and the step graph passes it on unchanged
            assert state[-1].shape == (1, 3, 16) and model.config.state_names[-1] == "image_embedding"
            torch.testing.assert_close(model.step(inputs[:, 0], state)[1][-1], state[-1], atol=0, rtol=0)
        steps = []
        for t in range(inputs.shape[1]):
            logits, state = model.step(inputs[:, t], state)  # (B, V)
            steps.append(logits)
    assert full.shape == (3, 6, 30)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


def test_owners_encode_each_image_once_for_several_captions():
    model = tiny()
    images = torch.randn(2, 3, 32, 32)
    inputs = torch.randint(4, 30, (3, 5))
    owners = torch.tensor([0, 0, 1])
    with torch.no_grad():
        shared = model(images, inputs, owners)
        repeated = model(images[owners], inputs)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=0)


def test_the_image_each_step_changes_every_step_and_old_configs_keep_the_first_step_only():
    """With image_each_step the image reaches every step (another image changes a step's logits given the same
    recurrent core state); a configuration saved before the field existed builds the seed's model."""
    model = tiny()
    state = model.image_step(torch.randn(2, 3, 32, 32))
    other = model.image_step(torch.randn(2, 3, 32, 32))
    mixed = (*state[:-1], other[-1])
    tokens = torch.tensor([5, 6])
    with torch.no_grad():
        assert not torch.allclose(model.step(tokens, state)[0], model.step(tokens, mixed)[0])
    saved = {k: v for k, v in model.config.to_dict().items() if k not in ("image_each_step", "image_grid")}
    old = CaptionModelConfig.from_dict(saved)
    assert old.image_each_step is False and old.image_grid == 1 and old.state_names == ("h", "c")


def test_cached_features_give_the_same_logits():
    model = tiny(freeze_encoder=True)
    images, inputs = torch.randn(2, 3, 32, 32), torch.randint(4, 30, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(model.encoder.features(images), inputs, features=True), model(images, inputs))


@pytest.mark.parametrize("name, width", [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v3_small", 576)])
def test_backbones_lose_their_classifier(name, width):
    backbone, feature_dim = build_backbone(name)
    assert feature_dim == width
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 64, 64)).flatten(1).shape == (1, width)


def test_frozen_encoder_has_no_trainable_backbone_and_keeps_batchnorm_in_eval():
    model = tiny(freeze_encoder=True)
    model.train()
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert all(p.requires_grad for p in model.encoder.project.parameters())
    assert not model.encoder.backbone.training and model.core.training


def test_encoder_weights_file_is_loaded(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = CaptionModel(CaptionModelConfig(vocab_size=30, encoder="resnet18", embed_dim=16, hidden_dim=24), path)
    assert torch.all(model.encoder.backbone.conv1.weight == 0.125)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_backbone("resnet_nonexistent")
    with pytest.raises(ValueError, match="unknown decoder"):
        CaptionModelConfig(vocab_size=30, decoder="transformer")


def test_lstm_forget_gate_bias_starts_at_the_configured_value():
    hidden = 24
    model = CaptionModel(CaptionModelConfig(vocab_size=30, encoder="resnet18", embed_dim=16, hidden_dim=hidden,
                                            decoder="lstm", layers=2, forget_bias=1.5))
    for layer in range(2):
        bias = getattr(model.core, f"bias_ih_l{layer}")  # gates i, f, g, o
        assert torch.equal(bias[hidden:2 * hidden], torch.full((hidden,), 1.5))
        others = torch.cat([bias[:hidden], bias[2 * hidden:]])
        assert others.abs().max() <= hidden ** -0.5 and others.std() > 0  # PyTorch's uniform init, untouched
        recurrent = getattr(model.core, f"bias_hh_l{layer}")[hidden:2 * hidden]
        assert recurrent.abs().max() <= hidden ** -0.5 and recurrent.std() > 0
    gru = CaptionModel(CaptionModelConfig(vocab_size=30, encoder="resnet18", embed_dim=16, hidden_dim=hidden,
                                          decoder="gru", forget_bias=1.5))
    assert gru.core.bias_ih_l0.abs().max() <= hidden ** -0.5  # only the LSTM has a forget gate


def test_backbone_stages_and_image_grid_keep_the_spatial_features():
    """Three of ResNet-18's stages end at 256 channels; a 4 x 4 grid keeps 16 cells apart: 4,096 features."""
    model = tiny(backbone_stages=3, image_grid=4)
    assert model.encoder.feature_dim == 256 * 16
    assert isinstance(model.encoder.backbone.layer4, torch.nn.Identity)
    with torch.no_grad():
        assert model.encoder.features(torch.randn(2, 3, 64, 64)).shape == (2, 4096)
        assert model.image_step(torch.randn(2, 3, 64, 64))[-1].shape == (1, 2, 16)
    assert tiny(backbone_stages=2).encoder.feature_dim == 128
    from capkit.models.config import ModelConfigError

    for bad in (0, 5, True, 2.0):
        with pytest.raises(ModelConfigError, match="backbone_stages must be an integer from 1 to 4"):
            tiny(backbone_stages=bad)
    with pytest.raises(ModelConfigError, match="regnet_x_400mf is neither"):
        tiny(encoder="regnet_x_400mf", backbone_stages=3)


def test_backbone_stages_of_a_mobilenet_end_where_its_stride_reaches_16():
    """MobileNetV3-Small's blocks up to the last one at stride 16 (48 channels): a 64-pixel image leaves a 4 x 4
    map, kept as 16 cells; four stages (stride 32) keep every block."""
    model = tiny(encoder="mobilenet_v3_small", backbone_stages=3, image_grid=4)
    assert len(model.encoder.backbone.features) == 9 and model.encoder.feature_dim == 48 * 16
    with torch.no_grad():
        assert model.encoder.features(torch.randn(2, 3, 64, 64)).shape == (2, 768)
    assert tiny(encoder="mobilenet_v3_small", backbone_stages=2).encoder.feature_dim == 24
    assert tiny(encoder="mobilenet_v3_small", backbone_stages=4).encoder.feature_dim == 576
    assert tiny(encoder="vgg11", backbone_stages=3).encoder.feature_dim == 512  # strides from its max pools
