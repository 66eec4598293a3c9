"""The subsystem string is the one spelling of a search-space point everywhere."""

from fractions import Fraction

import pytest

from espnet_allinone.precision import PrecisionError
from espnet_allinone.subsystem import (
    FLOAT_BITS,
    SearchSpace,
    Subsystem,
    SubsystemError,
    parse_precision,
)


def paper_space(**overrides) -> SearchSpace:
    conf = {
        "num_blocks": 12,
        "linear_units": 2048,
        "attention_heads": 4,
        "output_size": 256,
        "depths": [6, 9, 12],
        "widths": [0.5, 1.0],
        "precisions": ["int2", "int4", "int8", "fp"],
    }
    conf.update(overrides)
    return SearchSpace.from_encoder_conf(conf)


@pytest.mark.parametrize(
    "text, depth, width, bits",
    [
        ("d12-w1-fp", 12, Fraction(1), FLOAT_BITS),
        ("d6-w0.5-int4", 6, Fraction(1, 2), 4),
        ("d3-w0.25-int2", 3, Fraction(1, 4), 2),
        ("d9-w0.75-int8", 9, Fraction(3, 4), 8),
    ],
)
def test_parse_format_round_trip(text, depth, width, bits):
    sub = Subsystem.parse(text)
    assert (sub.depth, sub.width, sub.bits) == (depth, width, bits)
    assert str(sub) == text
    assert Subsystem.parse(str(sub)) == sub


def test_non_canonical_numbers_format_canonically():
    assert str(Subsystem.parse("d12-w1.0-fp")) == "d12-w1-fp"
    assert str(Subsystem.parse("d6-w0.50-int4")) == "d6-w0.5-int4"
    assert str(Subsystem(6, 0.5, 4)) == "d6-w0.5-int4"


def test_string_is_directory_safe():
    for sub in paper_space():
        assert all(c.isalnum() or c in "-." for c in str(sub)), str(sub)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("12-1-fp", "expected d<depth>-w<width>-<precision>"),
        ("d6-w0.5-int3", "int3"),
        ("d6-w0.5-float16", "malformed"),
        ("d0-w1-fp", "depth must be a positive integer"),
        ("d6-w1.5-fp", "width must be in (0, 1]"),
        ("", "malformed"),
    ],
)
def test_malformed_strings_are_rejected_clearly(bad, fragment):
    with pytest.raises(SubsystemError) as err:
        Subsystem.parse(bad)
    assert fragment in str(err.value)


def test_precision_words():
    assert parse_precision("int4") == 4
    assert parse_precision("fp") == FLOAT_BITS
    assert parse_precision("float") == FLOAT_BITS
    assert parse_precision(8) == 8
    with pytest.raises(PrecisionError, match="valid: int2, int4, int8, fp"):
        parse_precision(3)


def test_space_enumerates_every_combination_in_canonical_order():
    space = paper_space()
    subs = space.members()
    assert len(subs) == len(space) == 3 * 2 * 4
    assert len(set(subs)) == len(subs)
    assert subs[0] == space.smallest == Subsystem.parse("d6-w0.5-int2")
    assert subs[-1] == space.largest == Subsystem.parse("d12-w1-fp")
    assert [s.canonical_key for s in subs] == sorted(s.canonical_key for s in subs)


def test_size_order_is_by_bytes_then_depth_then_width():
    space = paper_space()
    nbytes = {s: (s.depth * s.width * (4 if s.is_float else s.bits)) for s in space}
    subs = space.ordered(nbytes.get)
    keys = [(nbytes[s], s.depth, s.width) for s in subs]
    assert keys == sorted(keys)
    # equal bytes are broken by depth, then width
    tied = [str(s) for s in subs if nbytes[s] == 12]
    assert tied == ["d6-w0.5-int4", "d6-w0.5-fp", "d6-w1-int2", "d12-w0.5-int2"]


def test_validate_names_bad_part_and_choices():
    space = paper_space()
    assert space.validate("d9-w0.5-int4") == Subsystem(9, Fraction(1, 2), 4)
    with pytest.raises(SubsystemError) as err:
        space.validate("d7-w0.25-int4")
    msg = str(err.value)
    assert "d7-w0.25-int4" in msg
    assert "depth 7 (valid: 6, 9, 12)" in msg
    assert "width 0.25 (valid: 0.5, 1)" in msg
    assert "precision" not in msg
    with pytest.raises(SubsystemError, match=r"precision fp \(valid: int4\)"):
        paper_space(precisions=["int4"]).validate("d12-w1-fp")


def test_resolve_all_lists_and_strings():
    space = paper_space()
    assert space.resolve("all") == space.members()
    assert space.resolve("d6-w0.5-int2, d12-w1-fp") == [
        Subsystem.parse("d6-w0.5-int2"),
        Subsystem.parse("d12-w1-fp"),
    ]
    assert space.resolve(["d12-w1-fp", "d12-w1-fp"]) == [Subsystem.parse("d12-w1-fp")]
    with pytest.raises(SubsystemError, match="not in this model's search space"):
        space.resolve("d6-w0.5-int2 d5-w1-fp")
    with pytest.raises(SubsystemError, match="no subsystem given"):
        space.resolve("")


def test_membership_and_dimensions():
    space = paper_space(elastic_conv=True)
    sub = Subsystem.parse("d6-w0.5-int4")
    assert sub in space and "d6-w0.5-int4" in space and "nonsense" not in space
    assert space.ffn_units(sub) == 1024
    assert space.heads(sub) == 2
    assert space.conv_channels(sub) == 128
    assert paper_space().conv_channels(sub) == 256


def test_space_rejects_widths_that_do_not_divide():
    with pytest.raises(SubsystemError, match="attention heads"):
        paper_space(widths=[0.125, 1.0])
    with pytest.raises(SubsystemError, match=r"depth 13 outside the model's 1\.\.12 blocks"):
        paper_space(depths=[6, 13])
    with pytest.raises(SubsystemError, match="unsupported weight precision"):
        paper_space(precisions=[3])


def test_pruning_target_is_an_optional_part_left_out_by_default():
    sub = Subsystem.parse("d12-w1-int4-p0.5")
    assert sub.prune == Fraction(1, 2) and str(sub) == "d12-w1-int4-p0.5"
    assert str(Subsystem.parse("d12-w1-int4")) == "d12-w1-int4"  # no existing name changes
    assert sub.with_precision("fp") == Subsystem.parse("d12-w1-fp-p0.5")
    with pytest.raises(SubsystemError, match=r"pruning target must be in \(0, 1\]"):
        Subsystem.parse("d12-w1-fp-p1.5")
    space = paper_space(prune_targets=[0.5, 0.3])
    assert space.largest == Subsystem.parse("d12-w1-fp")  # the unpruned model
    assert [str(s) for s in space.pruned][:2] == ["d12-w1-int2-p0.3", "d12-w1-int2-p0.5"]
    assert len(space) == 24 + 2 * 4
    with pytest.raises(SubsystemError, match=r"pruning target 0\.7 \(valid: 0\.3, 0\.5\)"):
        space.validate("d12-w1-fp-p0.7")
    with pytest.raises(SubsystemError, match="a pruning target applies to the full model: use "
                       "d12-w1-int4-p0.5"):
        space.validate("d6-w1-int4-p0.5")
    with pytest.raises(SubsystemError, match=r"pruning target 0\.5 \(valid: none in this model\)"):
        paper_space().validate("d12-w1-fp-p0.5")
