"""The real encoders keep the promises the rest of the package relies on."""

from __future__ import annotations

from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.protocol import (
    ElasticEncoder,
    ExtractableEncoder,
    protocol_violations,
)


def test_elastic_conformer_implements_the_extractable_protocol():
    assert protocol_violations(ElasticConformerEncoder, ExtractableEncoder) == []
    enc = ElasticConformerEncoder(input_size=8, output_size=16, attention_heads=2,
                                  linear_units=16, num_blocks=1, input_layer="linear")
    assert enc.space.largest == enc.active_subsystem


def test_a_class_missing_a_member_is_reported():
    class Partial:
        def set_subsystem(self, other):  # wrong parameter name
            return other

    problems = protocol_violations(Partial, ElasticEncoder)
    assert "Partial lacks active_subsystem" in problems
    assert "Partial lacks use_subsystem" in problems
    assert any(p.startswith("Partial.set_subsystem['self', 'other']") for p in problems)


def test_the_foundation_encoder_implements_the_extractable_protocol():
    from espnet_allinone.encoders.elastic_wav2vec2 import ElasticWav2Vec2Encoder

    assert protocol_violations(ElasticWav2Vec2Encoder, ExtractableEncoder) == []
