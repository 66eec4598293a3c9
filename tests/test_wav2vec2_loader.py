"""Users' wav2vec2 / HuBERT checkpoints in three formats, loaded offline.

Tiny checkpoints with random weights are written in each format by
``helpers.foundation_checkpoints``; the elastic encoder built
from the loaded ``encoder_conf`` + ``pretrained_path`` must compute what
torchaudio's own ``Wav2Vec2Model`` computes with the same weights (<= 1e-5).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers.foundation_checkpoints import (
    reference_model,
    write_fairseq,
    write_huggingface,
    write_torchaudio,
)

from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder
from espnet_allinone.encoders.wav2vec2_family import STRUCTURAL_KEYS
from espnet_allinone.foundation.loader import FoundationError, load_foundation

WAVE = torch.randn(2, 1600, generator=torch.Generator().manual_seed(5))
LENS = torch.tensor([1600, 1100])


def _elastic(path, **extra) -> ElasticWav2Vec2Encoder:
    conf = load_foundation(path).encoder_conf()
    enc = ElasticWav2Vec2Encoder(1, **conf, pretrained_path=str(path), **extra)
    return enc.eval()


@torch.no_grad()
def _assert_parity(enc, ref, normalize: bool = False) -> None:
    out, out_lens, _ = enc(WAVE, LENS)
    wave = WAVE
    if normalize:  # the reference gets each utterance normalised over its samples
        wave = torch.zeros_like(WAVE)
        for i, n in enumerate(LENS.tolist()):
            x = WAVE[i, :n]
            wave[i, :n] = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
    want, want_lens = ref(wave, LENS)
    assert torch.equal(out_lens, want_lens)
    diff = (out - want).abs().max().item()
    assert diff <= 1e-5, diff


CASES = {
    "hf-wav2vec2-safetensors": {"fmt": "hf", "kind": "wav2vec2", "safetensors": True},
    "hf-hubert-bin": {"fmt": "hf", "kind": "hubert", "safetensors": False, "for_ctc": False},
    "hf-prenorm-layernorm-front": {"fmt": "hf", "kind": "wav2vec2", "safetensors": True,
                                       "arch": {"encoder_layer_norm_first": True,
                                                 "extractor_mode": "layer_norm",
                                                 "extractor_conv_bias": True}},
    "fairseq-hubert-pretrained": {"fmt": "fairseq", "kind": "hubert"},
    "fairseq-wav2vec2-finetuned": {"fmt": "fairseq", "kind": "wav2vec2", "fine_tuned": True},
    "fairseq-layernorm-front": {"fmt": "fairseq", "kind": "wav2vec2",
                                    "arch": {"extractor_mode": "layer_norm",
                                              "encoder_layer_norm_first": True}},
    "torchaudio-with-config": {"fmt": "torchaudio", "with_config": True},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_full_size_float_equals_torchaudio(tmp_path, case):
    spec = dict(CASES[case])
    ref, kw, mask = reference_model(seed=len(case), **spec.pop("arch", {}))
    fmt = spec.pop("fmt")
    if fmt == "hf":
        path = write_huggingface(ref, kw, mask, tmp_path / "hf", **spec)
    elif fmt == "fairseq":
        path = write_fairseq(ref, kw, mask, tmp_path / "model.pt", **spec)
    else:
        path = write_torchaudio(ref, kw, tmp_path / "ta.pth", **spec)
    ckpt = load_foundation(path)
    assert ckpt.format == {"hf": "huggingface"}.get(fmt, fmt)
    assert {k: ckpt.arch[k] for k in STRUCTURAL_KEYS} == {k: kw[k] for k in STRUCTURAL_KEYS}
    assert ckpt.arch["encoder_layer_drop"] == 0.0  # layer drop off for fine-tuning
    enc = _elastic(path)
    _assert_parity(enc, ref)
    if fmt != "torchaudio":  # the checkpoint's mask embedding becomes the encoder's
        assert torch.equal(enc.mask_generator.mask_embedding.detach(), mask)


def test_fairseq_pt_loads_without_fairseq_and_its_pickled_classes(tmp_path):
    ref, kw, mask = reference_model()
    path = write_fairseq(ref, kw, mask, tmp_path / "hubert.pt")
    with pytest.raises(ModuleNotFoundError, match="fairseq"):
        torch.load(path, weights_only=False)  # a plain load needs fairseq
    assert importlib.util.find_spec("fairseq") is None
    assert load_foundation(path).format == "fairseq"


def test_bare_torchaudio_state_dict_infers_shapes_and_takes_heads_from_conf(tmp_path):
    """Heads are not in the tensors: the conf's encoder_num_heads wins over the guess."""
    ref, kw, _ = reference_model()
    path = write_torchaudio(ref, kw, tmp_path / "bare.pth")
    ckpt = load_foundation(path)
    assert "encoder_num_heads" in ckpt.guessed
    assert ckpt.arch["encoder_num_layers"] == 4 and ckpt.arch["encoder_ff_interm_features"] == 64
    assert ckpt.arch["extractor_conv_layer_config"] == kw["extractor_conv_layer_config"]
    conf = {**ckpt.encoder_conf(), "encoder_num_heads": 4}
    enc = ElasticWav2Vec2Encoder(1, **conf, pretrained_path=str(path)).eval()
    _assert_parity(enc, ref)


def test_waveform_normalisation_follows_the_checkpoint(tmp_path):
    ref, kw, mask = reference_model()
    path = write_huggingface(ref, kw, mask, tmp_path / "hf", do_normalize=True)
    ckpt = load_foundation(path)
    assert ckpt.normalize_waveform is True
    _assert_parity(_elastic(path), ref, normalize=True)
    with pytest.raises(ValueError, match="expects normalize_waveform: True"):
        ElasticWav2Vec2Encoder(1, **{**ckpt.encoder_conf(), "normalize_waveform": False},
                               pretrained_path=str(path))


def test_reload_after_reinitialisation_restores_the_checkpoint(tmp_path):
    """ESPnet's initialize() re-initialises, then calls reload_pretrained_parameters()."""
    ref, kw, mask = reference_model()
    path = write_fairseq(ref, kw, mask, tmp_path / "m.pt")
    enc = _elastic(path)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_()
    enc.reload_pretrained_parameters()
    _assert_parity(enc, ref)
    assert not any(p.requires_grad for p in enc.model.feature_extractor.parameters())


def test_unfolded_seed_takes_the_first_layers(tmp_path):
    ref, kw, _mask = reference_model()
    path = write_torchaudio(ref, kw, tmp_path / "ta.pth", with_config=True)
    conf = load_foundation(path).encoder_conf()
    enc = ElasticWav2Vec2Encoder(1, **conf, pretrained_path=str(path), seed_blocks=2,
                                 depths=[2, 4])
    assert len(enc.blocks) == 2
    for i in range(2):
        assert torch.equal(enc.blocks[i].feed_forward.output_dense.weight,
                           ref.encoder.transformer.layers[i].feed_forward.output_dense.weight)
    assert enc.resolve("d4-w1-fp").schedule == (0, 1, 0, 1)


# --- bad input ---------------------------------------------------------------------------------
def test_a_path_of_none_of_the_formats_is_refused_by_name(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(FoundationError, match=f"{folder}: a folder without config.json"):
        load_foundation(folder)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(FoundationError, match=f"{text}: not a Hugging Face folder, fairseq"):
        load_foundation(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(FoundationError, match=f"{other}: not a Hugging Face folder.*no key"):
        load_foundation(other)
    with pytest.raises(FoundationError, match="no such file"):
        load_foundation(tmp_path / "missing.pt")


def test_unsupported_architectures_are_refused(tmp_path):
    ref, kw, mask = reference_model()
    pt = write_fairseq(ref, kw, mask, tmp_path / "bn.pt", conv_pos_batch_norm=True)
    with pytest.raises(FoundationError, match=f"{pt}: conv positional embedding with batch "
                                              "norm"):
        load_foundation(pt)
    hf = write_huggingface(ref, kw, mask, tmp_path / "hf", conv_pos_batch_norm=True)
    with pytest.raises(FoundationError, match="config.json: conv positional embedding with "
                                              "batch norm"):
        load_foundation(hf)
    hf2 = write_huggingface(ref, kw, mask, tmp_path / "hf2", model_type="wavlm")
    with pytest.raises(FoundationError, match="model_type 'wavlm' is not supported"):
        load_foundation(hf2)
    pt2 = write_fairseq(ref, kw, mask, tmp_path / "relu.pt", activation_fn="relu")
    with pytest.raises(FoundationError, match="activation_fn 'relu' is not supported"):
        load_foundation(pt2)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    ref, kw, mask = reference_model()
    hf = write_huggingface(ref, kw, mask, tmp_path / "hf", intermediate_size=48)
    with pytest.raises(FoundationError, match=r"weights do not fit its config: encoder\."
                                              r"transformer\.layers\.0\.feed_forward\."
                                              r"intermediate_dense\.weight has shape \[64, 32\], "
                                              r"the config gives \[48, 32\]"):
        load_foundation(hf)
    pt = write_fairseq(ref, kw, mask, tmp_path / "deep.pt", encoder_layers=6)
    with pytest.raises(FoundationError, match="tensor\\(s\\) missing, e.g. encoder.transformer"
                                              ".layers.4"):
        load_foundation(pt)


def test_encoder_conf_that_does_not_fit_the_checkpoint_is_refused(tmp_path):
    ref, kw, _mask = reference_model()
    path = write_torchaudio(ref, kw, tmp_path / "ta.pth", with_config=True)
    conf = {**load_foundation(path).encoder_conf(), "encoder_num_layers": 6}
    with pytest.raises(ValueError, match=f"pretrained_path {path}: the checkpoint does not fit "
                                         "encoder_conf \\(encoder_num_layers: 4 in the "
                                         "checkpoint, 6 in encoder_conf\\)"):
        ElasticWav2Vec2Encoder(1, **conf, pretrained_path=str(path))


def test_a_width_leaving_a_fractional_head_is_refused():
    from helpers.foundation_checkpoints import TINY

    with pytest.raises(ValueError, match="elastic_wav2vec2 search space: width 0.125 gives 0.5 attention heads of 4"):
        ElasticWav2Vec2Encoder(1, **TINY, widths=[0.125, 1])


def test_stub_unpickler_never_imports_unlisted_modules(tmp_path):
    """A pickle naming os.system is refused by name, never resolved (tests/test_safe_loading.py
    covers the other payloads and formats)."""
    import os

    from espnet_allinone.foundation.pickle_stubs import UnsafePickleError, load_pickled

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UnsafePickleError, match=f"refused to load {os.system.__module__}.system"):
        load_pickled(path)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers not installed (optional parity check)")
def test_parity_with_transformers_models(tmp_path):  # pragma: no cover - optional
    import transformers

    for kind, cls in (("wav2vec2", transformers.Wav2Vec2Model),
                      ("hubert", transformers.HubertModel)):
        ref, kw, mask = reference_model()
        path = write_huggingface(ref, kw, mask, tmp_path / kind, kind=kind, for_ctc=False,
                                 safetensors=False)
        hf = cls.from_pretrained(str(path)).eval()
        enc = _elastic(path)
        with torch.no_grad():
            out, _, _ = enc(WAVE[:1], LENS[:1])
            want = hf(WAVE[:1]).last_hidden_state
        assert (out - want).abs().max().item() <= 1e-4


def test_espnet_hubert_pretraining_checkpoint_loads_by_its_prefix(tmp_path):
    """ESPnet's hubert_train saves torchaudio's model under encoder.hubert_pretrain_model."""
    ref, _kw, mask = reference_model()
    state = {f"encoder.hubert_pretrain_model.wav2vec2.{k}": v for k, v in ref.state_dict().items()}
    state["encoder.hubert_pretrain_model.mask_generator.mask_embedding"] = mask
    state["encoder.hubert_pretrain_model.logit_generator.final_proj.weight"] = torch.zeros(3, 32)
    path = tmp_path / "valid.loss.best.pth"
    torch.save(state, path)
    ckpt = load_foundation(path)
    assert ckpt.format == "torchaudio" and torch.equal(ckpt.mask_embedding, mask)
    enc = ElasticWav2Vec2Encoder(1, **{**ckpt.encoder_conf(), "encoder_num_heads": 4},
                                 pretrained_path=str(path)).eval()
    _assert_parity(enc, ref)
