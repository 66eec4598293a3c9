"""What the families share: unfolding in one module, protocol checks where an encoder
enters, the registry's names in errors, and checkpoint reading below the encoders."""

from __future__ import annotations

import subprocess
import sys

import pytest

from espnet_allinone.elastic.unfolding import (
    check_seed,
    occurrences,
    position_count,
    stacked_conf,
    unrolled_state,
)
from espnet_allinone.encoders.protocol import (
    ElasticEncoder,
    ExtractableEncoder,
    elastic_encoder_names,
    encoder_violations,
    protocol_violations,
)
from espnet_allinone.subsystem import SearchSpace, Subsystem

pytestmark = pytest.mark.usefixtures("one_thread")


def _space(depths: list[int]) -> SearchSpace:
    return SearchSpace.from_encoder_conf({"num_blocks": 6, "linear_units": 8,
                                          "attention_heads": 2, "output_size": 8,
                                          "depths": depths})


def test_one_seed_check_in_each_family_s_words():
    check_seed(_space([2, 4, 6]), None, "spiral")  # stacked: nothing to check
    with pytest.raises(ValueError, match=r"depth\(s\) \[3\] cannot be made by unfolding a "
                       r"2-layer seed; valid depths: 2, 4, 6 \(multiples of seed_blocks up to "
                       r"encoder_num_layers\)"):
        check_seed(_space([2, 3]), 2, "repeat", blocks_key="encoder_num_layers", unit="layer")
    with pytest.raises(ValueError, match=r"seed_blocks 7 must be in 1\.\.num_blocks \(6\)"):
        check_seed(_space([6]), 7, "blockwise")


def test_positions_and_the_stacked_layout_of_shared_blocks():
    assert list(occurrences((0, 1, 0, 1))) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert (position_count(6, 2, True), position_count(6, 2, False),
            position_count(6, None, True)) == (3, 1, 1)
    assert stacked_conf({"num_blocks": 6, "seed_blocks": 2, "unfold": "repeat",
                         "position_stats": True}) == {"num_blocks": 6}
    state = {"embed.w": "E", "blocks.0.w": "W", "blocks.0.norm.running_mean": "m0",
             "blocks.0.norm.running_mean_r1": "m1"}
    assert unrolled_state(state, [0, 0], "blocks") == {
        "embed.w": "E", "blocks.0.w": "W", "blocks.0.norm.running_mean": "m0",
        "blocks.1.w": "W", "blocks.1.norm.running_mean": "m1"}


def test_each_family_names_its_stacked_twin():
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
    from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder

    conf = {"num_blocks": 6, "seed_blocks": 2, "unfold": "blockwise", "depths": [2, 4, 6]}
    sub = Subsystem.parse("d4-w1-fp")
    assert ElasticConformerEncoder.alone_conf(conf, sub) == {"num_blocks": 4, "depths": [4]}
    w2v = {"encoder_num_layers": 6, "seed_blocks": 2, "depths": [2, 4, 6]}
    assert ElasticWav2Vec2Encoder.alone_conf(w2v, sub) == {"encoder_num_layers": 6,
                                                          "depths": [4]}
    assert ElasticConformerEncoder.alone_conf({"num_blocks": 6}, sub) == {"num_blocks": 6}


def test_the_protocol_reports_class_and_instance_attributes():
    class Bare:
        pass

    assert "Bare lacks stock_encoder" in protocol_violations(Bare, ExtractableEncoder)
    assert "Bare lacks space" not in protocol_violations(Bare, ElasticEncoder)
    assert "Bare lacks space" in encoder_violations(Bare(), ElasticEncoder)


def test_the_registry_names_the_elastic_encoders_and_their_stock_twins():
    from espnet_allinone.export.zoo import stock_encoders

    assert elastic_encoder_names() == ["elastic_conformer", "elastic_wav2vec2"]
    assert stock_encoders() == {"conformer", "torchaudiohubert"}


def test_a_model_without_an_elastic_encoder_names_the_registered_ones():
    from espnet2.asr.ctc import CTC
    from espnet2.asr.encoder.rnn_encoder import RNNEncoder

    from espnet_allinone.models.allinone import ESPnetAllInOneASRModel

    tokens = ["<blank>", "<unk>", "a", "<sos/eos>"]
    with pytest.raises(ValueError, match=r"needs an elastic encoder \(encoder: one of "
                       r"elastic_conformer, elastic_wav2vec2\), got RNNEncoder \(RNNEncoder "
                       r"lacks active_subsystem"):
        ESPnetAllInOneASRModel(
            vocab_size=len(tokens), token_list=tokens, frontend=None, specaug=None,
            normalize=None, preencoder=None,
            encoder=RNNEncoder(4, num_layers=1, hidden_size=8, output_size=8),
            postencoder=None, decoder=None, ctc=CTC(odim=len(tokens), encoder_output_size=8),
            joint_network=None, ctc_weight=1.0)


def test_checkpoint_reading_imports_no_encoder():
    code = ("import sys, espnet_allinone.foundation.conf\n"
            "print(sorted(m for m in sys.modules if m.startswith('espnet_allinone.encoders')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
