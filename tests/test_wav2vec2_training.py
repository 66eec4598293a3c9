"""Fine-tuning essentials of elastic_wav2vec2 inside ``model: allinone``.

A few real training steps of the ESPnet all-in-one model on random audio:
the encoder is frozen for ``freeze_encoder_updates`` steps (counted per batch,
not per subsystem path), the conv feature extractor stays frozen, time masks
use the mask embedding, and a float step at full size is the stock forward.
"""

from __future__ import annotations

import pytest
import torch
from helpers.foundation_checkpoints import TINY

from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder


@pytest.fixture(scope="module")
def model():
    from espnet2.tasks.asr import ASRTask
    from helpers.toy_experiment import token_list

    from espnet_allinone.export.model_io import build_asr_model
    from espnet_allinone.registry import register

    register()
    config = vars(ASRTask.get_parser().parse_args(["--output_dir", "/tmp/unused"]))
    config.update(
        token_list=token_list(), token_type="char", input_size=1, frontend=None,
        frontend_conf={}, specaug=None, normalize=None, normalize_conf={},
        encoder="elastic_wav2vec2",
        encoder_conf={**TINY, "depths": [2, 4], "widths": [0.5, 1],
                      "precisions": ["int8", "fp"], "mask_prob": 0.5, "mask_length": 2,
                      "freeze_encoder_updates": 1,
                      "quant_conf": {"granularity": "channel"}},
        model="allinone", model_conf={"ctc_weight": 1.0, "sampling": "sandwich",
                                      "num_random": 1},
        decoder=None, decoder_conf={},
    )
    torch.manual_seed(0)
    net = build_asr_model(config)
    net.train()
    return net


def _step(net) -> dict[str, bool]:
    gen = torch.Generator().manual_seed(1)
    speech = torch.randn(2, 3200, generator=gen) * 0.1
    lens = torch.tensor([3200, 2400])
    text = torch.randint(2, 20, (2, 5), generator=gen)
    net.zero_grad(set_to_none=True)
    loss, _stats, _ = net(speech, lens, text, torch.tensor([5, 4]))
    assert torch.isfinite(loss)
    loss.backward()
    enc = net.encoder

    def has_grad(module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    return {"layers": has_grad(enc.layers), "front": has_grad(enc.model.feature_extractor),
            "ctc": has_grad(net.ctc)}


def test_freezing_counts_batches_not_paths(model):
    first = _step(model)  # step 1 of freeze_encoder_updates 1: only CTC learns
    assert first == {"layers": False, "front": False, "ctc": True}
    assert int(model.encoder.global_step) == 1  # three paths, one batch
    second = _step(model)
    assert second == {"layers": True, "front": False, "ctc": True}
    assert int(model.encoder.global_step) == 2


@torch.no_grad()
def test_time_masks_use_the_mask_embedding():
    enc = ElasticWav2Vec2Encoder(1, **TINY, mask_prob=0.9, mask_length=2)
    enc.mask_generator.mask_embedding.fill_(7.0)
    seen = {}
    transformer = enc.model.encoder.transformer  # its input is the masked projection
    transformer.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone()))
    wave, lens = torch.randn(2, 1600), torch.tensor([1600, 1600])
    enc.train()
    enc(wave, lens)
    masked = (seen["x"] == 7.0).all(-1).float().mean().item()
    assert masked > 0.3
    enc.eval()  # no masks outside training
    enc(wave, lens)
    assert not (seen["x"] == 7.0).all(-1).any()


@torch.no_grad()
def test_frozen_front_is_reused_only_while_input_and_weights_are_unchanged():
    enc = ElasticWav2Vec2Encoder(1, **TINY).eval()
    wave, lens = torch.randn(2, 1600), torch.tensor([1600, 1200])
    first, _, _ = enc(wave, lens)
    again, _, _ = enc(wave, lens)
    assert torch.equal(first, again)
    enc.model.feature_extractor.conv_layers[0].conv.weight.mul_(2.0)  # e.g. a reload
    changed, _, _ = enc(wave, lens)
    assert not torch.allclose(changed, first)
    wave.mul_(0.5)  # the same tensor object, new content
    assert not torch.allclose(enc(wave, lens)[0], changed)
