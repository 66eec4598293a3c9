"""Subsystem sampling: determinism, coverage, strategies, path weights, bad input."""

from __future__ import annotations

import collections

import pytest

from espnet_allinone.subsystem import SearchSpace, Subsystem, SubsystemError
from espnet_allinone.train.sampling import (
    STRATEGIES,
    SubsystemSampler,
    check_path_weights,
    step_seed,
)


@pytest.fixture
def space() -> SearchSpace:
    # 3 depths x 2 widths x 4 precisions = 24 subsystems.
    return SearchSpace.from_encoder_conf({
        "num_blocks": 12, "linear_units": 2048, "attention_heads": 4, "output_size": 256,
        "depths": [6, 9, 12], "widths": [0.5, 1.0], "precisions": ["int2", "int4", "int8", "fp"],
    })


def test_step_seed_is_stable_and_distinct() -> None:
    """Seeds are pinned literals (same on every host and Python) and differ per step."""
    # Computed once from blake2b("seed:step"); a change here changes every training draw.
    assert step_seed(0, 0) == 7120306904099482837
    assert step_seed(0, 1) == 5509842535781378034
    assert step_seed(1, 0) == 8864653025108052306
    assert step_seed(7, 3) == 1196508733449348778
    assert step_seed(123, 456) == 7538984990010669407
    assert len({step_seed(0, t) for t in range(1000)}) == 1000
    assert len({step_seed(s, t) for s in range(3) for t in range(100)}) == 300
    assert 0 <= step_seed(123, 456) < 2**63


def test_sandwich_has_extremes_and_is_deterministic(space: SearchSpace) -> None:
    a = SubsystemSampler(space, "sandwich", num_random=2, seed=7)
    b = SubsystemSampler(space, "sandwich", num_random=2, seed=7)
    for step in range(50):
        paths = a.sample(step)
        assert paths == b.sample(step)
        assert paths[0] == Subsystem.parse("d12-w1-fp") == space.largest
        assert paths[1] == Subsystem.parse("d6-w0.5-int2") == space.smallest
        assert len(paths) == len(set(paths)) == 4 == a.num_paths
        assert all(p in space for p in paths)
    # Re-asking for an old step gives the same answer (no hidden state).
    assert a.sample(3) == b.sample(3)


def test_sandwich_covers_every_middle_subsystem_uniformly(space: SearchSpace) -> None:
    sampler = SubsystemSampler(space, "sandwich", num_random=1, seed=0)
    counts = collections.Counter(sampler.sample(step)[2] for step in range(4400))
    assert set(counts) == set(space.ordered()) - {space.largest, space.smallest}
    # 22 middle subsystems, 200 expected each; 4-sigma band.
    assert all(140 < c < 260 for c in counts.values()), counts


def test_seed_and_step_change_the_draw(space: SearchSpace) -> None:
    s0 = SubsystemSampler(space, "random", num_random=3, seed=0)
    s1 = SubsystemSampler(space, "random", num_random=3, seed=1)
    seq0 = [tuple(s0.sample(t)) for t in range(30)]
    seq1 = [tuple(s1.sample(t)) for t in range(30)]
    assert seq0 != seq1
    assert len(set(seq0)) > 20  # steps differ from each other


def test_random_draws_k_distinct(space: SearchSpace) -> None:
    sampler = SubsystemSampler(space, "random", num_random=5, seed=3)
    seen = set()
    for step in range(200):
        paths = sampler.sample(step)
        assert len(paths) == len(set(paths)) == 5
        seen.update(paths)
    assert seen == set(space.ordered())
    assert not sampler.always_has_largest


def test_all_and_explicit(space: SearchSpace) -> None:
    every = SubsystemSampler(space, "all")
    assert every.sample(0) == every.sample(99)
    assert len(every.sample(0)) == 24 == every.num_paths
    assert every.sample(0)[0] == space.largest  # teacher first
    listed = SubsystemSampler(space, "all", subsystems="d6-w0.5-int4,d12-w1-fp")
    assert [str(s) for s in listed.sample(5)] == ["d12-w1-fp", "d6-w0.5-int4"]
    explicit = SubsystemSampler(space, "explicit", subsystems=["d9-w1-int8", "d6-w1-fp"])
    assert [str(s) for s in explicit.sample(0)] == ["d9-w1-int8", "d6-w1-fp"]
    assert not explicit.always_has_largest
    teacher_last = SubsystemSampler(space, "explicit", subsystems=["d6-w1-fp", "d12-w1-fp"])
    assert [str(s) for s in teacher_last.sample(0)] == ["d12-w1-fp", "d6-w1-fp"]
    assert teacher_last.always_has_largest


def test_draw_tells_fixed_from_random_paths(space: SearchSpace) -> None:
    """The model reports fixed paths per subsystem and random ones aggregated."""
    sandwich = SubsystemSampler(space, "sandwich", num_random=2, seed=7)
    for step in range(20):
        drawn = sandwich.draw(step)
        assert drawn.fixed == (space.largest, space.smallest)
        assert len(drawn.random) == 2 and not set(drawn.random) & set(drawn.fixed)
        assert drawn.paths == sandwich.sample(step)
    assert len({sandwich.draw(t).random for t in range(20)}) > 5  # they do vary
    every = SubsystemSampler(space, "all").draw(3)
    assert every.random == () and len(every.fixed) == 24
    random = SubsystemSampler(space, "random", num_random=3).draw(3)
    assert random.fixed == () and len(random.random) == 3


def test_single_subsystem_space() -> None:
    tiny = SearchSpace.from_encoder_conf(
        {"num_blocks": 2, "linear_units": 8, "attention_heads": 2, "output_size": 8})
    sampler = SubsystemSampler(tiny, "sandwich", num_random=3)
    assert [str(s) for s in sampler.sample(0)] == ["d2-w1-fp"]
    assert sampler.num_paths == 1


def test_unknown_strategy_lists_valid(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="unknown sampling strategy 'sandwhich'") as e:
        SubsystemSampler(space, "sandwhich")
    for name in STRATEGIES:
        assert name in str(e.value)


def test_explicit_outside_space_names_bad_part(space: SearchSpace) -> None:
    with pytest.raises(SubsystemError, match=r"depth 3 \(valid: 6, 9, 12\)"):
        SubsystemSampler(space, "explicit", subsystems=["d3-w1-fp"])
    with pytest.raises(SubsystemError, match="malformed subsystem"):
        SubsystemSampler(space, "explicit", subsystems=["12-1-fp"])
    with pytest.raises(ValueError, match="needs a list in model_conf.subsystems"):
        SubsystemSampler(space, "explicit")


def test_random_bad_counts(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="num_random 30 exceeds the 24"):
        SubsystemSampler(space, "random", num_random=30)
    with pytest.raises(ValueError, match="num_random must be an integer >= 0"):
        SubsystemSampler(space, "sandwich", num_random=-1)


def test_path_weights(space: SearchSpace) -> None:
    assert check_path_weights(None, 3, "sandwich") == [1.0, 1.0, 1.0]
    assert check_path_weights([1, 0.5, 0.5], 3, "sandwich") == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="path_weights has 2 entries but sampling 'sandwich' runs 3"):
        check_path_weights([1.0, 1.0], 3, "sandwich")
    with pytest.raises(ValueError, match="must be >= 0"):
        check_path_weights([1.0, -1.0], 2, "all")


# --- mixed records ---------------------------------------------------------------------
def test_mixed_draws_are_reproducible_and_leave_the_uniform_draw_alone(space: SearchSpace
                                                                        ) -> None:
    from espnet_allinone.search.records import MixedRecord

    a = SubsystemSampler(space, "sandwich", num_random=2, seed=7, mixed_share=0.5)
    b = SubsystemSampler(space, "sandwich", num_random=2, seed=7, mixed_share=0.5)
    plain = SubsystemSampler(space, "sandwich", num_random=2, seed=7)
    mixed = 0
    for step in range(60):
        drawn = a.draw(step)
        assert drawn == b.draw(step) == a.draw(step)  # from (seed, step) alone
        assert drawn.fixed == (space.largest, space.smallest) and len(drawn.paths) == 4
        for got, uniform in zip(drawn.random, plain.draw(step).random):
            if isinstance(got, MixedRecord):
                mixed += 1
                got.check(space)
                assert got.depth in space.depths and len(got.blocks) == space.num_blocks
                assert all(c.is_uniform for c in got.blocks)  # one width per block
                assert MixedRecord.parse(str(got)) == got and "," not in str(got)
            else:
                assert got == uniform  # a slot not replaced keeps its uniform draw
    assert 35 < mixed < 85  # half of 120 random slots
    assert a.num_paths == plain.num_paths


def test_mixed_draws_cover_the_space_per_block_and_per_module(space: SearchSpace) -> None:
    sampler = SubsystemSampler(space, "random", num_random=1, seed=1, mixed_share=1.0,
                               mixed_per_module=True)
    records = [sampler.draw(t).random[0] for t in range(200)]
    assert {r.depth for r in records} == set(space.depths)
    for k in (0, space.num_blocks - 1):
        assert {r.blocks[k].bits for r in records} == set(space.bits)
        assert {w for r in records for w in r.blocks[k].widths} == set(space.widths)
    assert any(not c.is_uniform for r in records for c in r.blocks)


def test_mixed_share_bad_values_are_named(space: SearchSpace) -> None:
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match="mixed_share must be a number in"):
            SubsystemSampler(space, "sandwich", mixed_share=bad)
    with pytest.raises(ValueError, match="mixed_share 0.5 replaces randomly drawn paths, but "
                                         "sampling 'all' draws none"):
        SubsystemSampler(space, "all", mixed_share=0.5)
    with pytest.raises(ValueError, match="sampling 'sandwich' draws none"):
        SubsystemSampler(space, "sandwich", num_random=0, mixed_share=0.5)


def _mixed_model(seed: int, shape: dict | None = None, **conf):
    """The all-in-one model with a tiny real Conformer drawing mixed records only."""
    import torch

    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
    from tests.test_allinone_model import build

    torch.manual_seed(seed)  # a rank's own global RNG state: must not matter
    enc = ElasticConformerEncoder(
        20, output_size=16, attention_heads=2, linear_units=32, input_layer="linear",
        cnn_module_kernel=3, **(shape or {"num_blocks": 2, "depths": [1, 2]}),
        widths=[0.5, 1.0], precisions=["int4", "fp"], elastic_conv=True, dropout_rate=0.0,
        positional_dropout_rate=0.0)
    return build(encoder=enc, sampling="sandwich", num_random=1, mixed_share=1.0,
                 seed=0, ctc_weight=1.0, **conf)


@pytest.mark.parametrize("shape", [None, {"num_blocks": 3, "seed_blocks": 1,
                                          "depths": [1, 2, 3]}], ids=["stacked", "unfolded"])
def test_mixed_paths_run_their_record_and_match_across_ranks(tmp_path, shape) -> None:
    """Two "ranks" (models built under different global RNG states) log the same mixed
    paths step by step; the random path's loss is the loss of that record's arch."""
    import torch

    from espnet_allinone.search.records import MixedRecord, build_arch
    from tests.test_allinone_model import batch

    logs, models = [], []
    for rank, seed in enumerate((11, 12)):
        log = tmp_path / f"paths.{rank}.log"
        model = _mixed_model(0, shape, sampling_log=str(log))
        torch.manual_seed(seed)
        model.train()
        for step in range(3):
            b = batch(seed=step)
            b["speech"] = b["speech"].repeat(1, 1, 5)
            _, stats, _ = model(**{k: v.clone() for k, v in b.items()})  # MVN is in place
        logs.append(log.read_text())
        models.append((model, b, stats))
    assert logs[0] == logs[1] and logs[0].count("\n") == 3
    model, b, stats = models[0]
    record = model.sampler.draw(2).random[0]
    assert isinstance(record, MixedRecord) and str(record) in logs[0].splitlines()[2]
    arch = build_arch(model.encoder, record)
    if shape:  # a seed block shared by every logical position keeps one choice
        assert len(set(arch.schedule)) == 1 and len(set(arch.blocks)) == 1
    b["text"][b["text"] == -1] = model.ignore_id
    with torch.no_grad():
        feats, lens = model._features(b["speech"], b["speech_lengths"])
        with model.encoder.use_arch(arch):
            enc, enc_lens = model._encode_features(feats, lens)
        loss, _, _ = model._path_loss(enc, enc_lens, b["text"][:, :4], b["text_lengths"])
    assert torch.allclose(stats["loss_random"], loss, atol=1e-5)
    assert model.encoder.active_subsystem == model.space.largest


def test_mixed_share_needs_an_encoder_with_records() -> None:
    from tests.test_allinone_model import build

    with pytest.raises(ValueError, match="mixed_share > 0 needs an encoder that runs "
                                         "architecture records; TinyElasticEncoder lacks"):
        build(sampling="sandwich", num_random=1, mixed_share=0.5)


def test_draw_weights_favour_the_named_subsystems(space: SearchSpace) -> None:
    """22 middle subsystems; d6-w1-fp weighs 4 and d9-w0.5-int4 2: expected shares
    4/27 and 2/27 of 5400 draws (800 and 400), the others 1/27 (200 each)."""
    weights = {"d6-w1-fp": 4, "d9-w0.5-int4": 2.0}
    sampler = SubsystemSampler(space, "sandwich", num_random=1, seed=0, draw_weights=weights)
    again = SubsystemSampler(space, "sandwich", num_random=1, seed=0, draw_weights=weights)
    counts = collections.Counter(sampler.sample(step)[2] for step in range(5400))
    assert [again.sample(step)[2] for step in range(50)] == \
        [sampler.sample(step)[2] for step in range(50)]
    assert 690 < counts[Subsystem.parse("d6-w1-fp")] < 910, counts  # 4 sigma around 800
    assert 320 < counts[Subsystem.parse("d9-w0.5-int4")] < 480, counts
    rest = [c for s, c in counts.items() if str(s) not in weights]
    assert len(rest) == 20 and all(140 < c < 260 for c in rest), counts
    # two random paths a step: distinct, the favoured one more often in them
    two = SubsystemSampler(space, "sandwich", num_random=2, seed=0, draw_weights=weights)
    drawn = [two.draw(step).random for step in range(2000)]
    assert all(len(set(d)) == 2 for d in drawn)
    favoured = sum(Subsystem.parse("d6-w1-fp") in d for d in drawn)
    plain = sum(Subsystem.parse("d6-w0.5-fp") in d for d in drawn)
    assert favoured > 2 * plain


def test_uniform_draws_are_unchanged_without_weights(space: SearchSpace) -> None:
    plain = SubsystemSampler(space, "sandwich", num_random=2, seed=3)
    empty = SubsystemSampler(space, "sandwich", num_random=2, seed=3, draw_weights={})
    assert [plain.sample(t) for t in range(100)] == [empty.sample(t) for t in range(100)]


def test_draw_weights_bad_values_are_named(space: SearchSpace) -> None:
    def make(weights, strategy="sandwich", **kw):
        return SubsystemSampler(space, strategy, num_random=1, draw_weights=weights, **kw)

    with pytest.raises(ValueError, match=r"names 'd12-w1-fp', which is never drawn here.*"
                                         r"drawable: d12-w1-int8, d12-w1-int4, .*, d6-w0.5-int4$"):
        make({"d12-w1-fp": 2})  # the largest runs every step
    with pytest.raises(ValueError, match=r"draw_weights: subsystem d5-w1-fp is not in this "
                                         r"model's search space: depth 5 \(valid: 6, 9, 12\)"):
        make({"d5-w1-fp": 2})
    for bad in (0, -1, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match=r"draw_weights\['d6-w1-fp'\] must be a positive"):
            make({"d6-w1-fp": bad})
    with pytest.raises(ValueError, match=r"sampling 'all' draws none here"):
        make({"d6-w1-fp": 2}, strategy="all")
