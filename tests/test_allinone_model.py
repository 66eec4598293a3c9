"""ESPnetAllInOneASRModel: multi-path step, distillation, validation keys, state, bad input.

Runs against a tiny elastic encoder with the ElasticConformerEncoder interface
(defined here, so these tests are fast and independent of the Conformer), and
against the real ElasticConformerEncoder in ``test_real_encoder_step``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.layers.utterance_mvn import UtteranceMVN

from espnet_allinone.models.allinone import ESPnetAllInOneASRModel
from espnet_allinone.subsystem import FLOAT_BITS, SearchSpace, Subsystem, SubsystemError
from espnet_allinone.train.distill import length_mask, masked_kl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


TOKENS = ["<blank>", "<unk>", "a", "b", "c", "d", "<sos/eos>"]
FEAT_DIM = 4

class TinyElasticEncoder(AbsEncoder):
    """Residual MLP blocks; depth = prefix of blocks, width = first units, bits = fake quant."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 8,
        num_blocks: int = 2,
        linear_units: int = 8,
        depths: Sequence[int] | None = (1, 2),
        widths: Sequence[float] | None = (0.5, 1.0),
        precisions: Sequence[int | str] | None = ("int4", "fp"),
    ) -> None:
        super().__init__()
        self.space = SearchSpace.from_encoder_conf({
            "num_blocks": num_blocks, "linear_units": linear_units, "attention_heads": 2,
            "output_size": output_size, "depths": depths, "widths": widths, "precisions": precisions,
        })
        self._out = output_size
        self.proj = torch.nn.Linear(input_size, output_size)
        self.w1 = torch.nn.ModuleList(
            torch.nn.Linear(output_size, linear_units) for _ in range(num_blocks)
        )
        self.w2 = torch.nn.ModuleList(
            torch.nn.Linear(linear_units, output_size) for _ in range(num_blocks)
        )
        self.scale = torch.nn.ParameterDict(
            {f"int{b}": torch.nn.Parameter(torch.tensor(0.1)) for b in self.space.bits
             if b != FLOAT_BITS}
        )
        self._active = self.space.largest

    def output_size(self) -> int:
        return self._out

    @property
    def active_subsystem(self) -> Subsystem:
        return self._active

    def set_subsystem(self, sub: str | Subsystem) -> Subsystem:
        self._active = self.space.validate(sub)
        return self._active

    @contextmanager
    def use_subsystem(self, sub: str | Subsystem) -> Iterator[Subsystem]:
        previous = self._active
        try:
            yield self.set_subsystem(sub)
        finally:
            self._active = previous

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        bits = self._active.bits
        if bits == FLOAT_BITS:
            return w
        scale = self.scale[f"int{bits}"].abs() + 1e-4
        q = 2 ** (bits - 1) - 1
        x = torch.clamp(w / scale, -q - 1, q)
        return (torch.round(x) - x).detach() * scale + x * scale  # STE, LSQ-style grads

    def forward(self, xs_pad, ilens, prev_states=None):
        units = self.space.ffn_units(self._active)
        x = self.proj(xs_pad)
        for i in range(self._active.depth):
            w1, w2 = self.w1[i], self.w2[i]
            h = torch.relu(
                torch.nn.functional.linear(x, self._weight(w1.weight[:units]), w1.bias[:units])
            )
            x = x + torch.nn.functional.linear(h, self._weight(w2.weight[:, :units]), w2.bias)
        return x, ilens, None


class CountingMVN(UtteranceMVN):
    """UtteranceMVN that counts its calls (the front part must run once per step)."""

    calls = 0

    def forward(self, x, ilens=None):
        CountingMVN.calls += 1
        return super().forward(x, ilens)


def build(ctc_weight: float = 0.5, seed: int = 0, encoder: AbsEncoder | None = None,
          **conf) -> ESPnetAllInOneASRModel:
    torch.manual_seed(seed)
    enc = encoder if encoder is not None else TinyElasticEncoder(FEAT_DIM)
    vocab = len(TOKENS)
    decoder = None
    if ctc_weight < 1.0:
        decoder = TransformerDecoder(
            vocab_size=vocab, encoder_output_size=enc.output_size(), attention_heads=2,
            linear_units=16, num_blocks=1, dropout_rate=0.0,
            positional_dropout_rate=0.0, self_attention_dropout_rate=0.0,
            src_attention_dropout_rate=0.0,
        )
    return ESPnetAllInOneASRModel(
        vocab_size=vocab, token_list=list(TOKENS), frontend=None, specaug=None,
        normalize=CountingMVN(), preencoder=None, encoder=enc, postencoder=None,
        decoder=decoder, ctc=CTC(odim=vocab, encoder_output_size=enc.output_size()),
        joint_network=None, ctc_weight=ctc_weight, **conf,
    )


def batch(seed: int = 0, n: int = 3, frames: int = 20) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([frames, frames - 4, frames - 7][:n])
    speech = torch.randn(n, frames, FEAT_DIM, generator=g)
    text_lengths = torch.tensor([4, 3, 2][:n])
    text = torch.randint(2, 6, (n, 4), generator=g)
    for i, k in enumerate(text_lengths.tolist()):
        text[i, k:] = -1
    return {"speech": speech, "speech_lengths": lengths, "text": text,
            "text_lengths": text_lengths}


def plain_and_variant(common: dict, **variant) -> tuple:
    """Two models with the same weights, in training mode: ``common`` options, and
    ``common`` plus ``variant`` ones."""
    plain = build(**common)
    other = build(**common, **variant)
    other.load_state_dict(plain.state_dict())
    plain.train()
    other.train()
    return plain, other


def step(model: ESPnetAllInOneASRModel, b: dict) -> tuple:
    """One forward on a copy of the batch (the model edits ``text`` in place)."""
    return model(**{k: v.clone() for k, v in b.items()})


def test_training_step_runs_sampled_paths_once_each() -> None:
    model = build(sampling="sandwich", num_random=1)
    model.train()
    CountingMVN.calls = 0
    loss, stats, weight = model(**batch())
    assert CountingMVN.calls == 1  # frontend/normalise once, not per path
    drawn = model.sampler.draw(0)
    assert [str(p) for p in drawn.fixed] == ["d2-w1-fp", "d1-w0.5-int4"]
    assert len(drawn.random) == 1 and drawn.paths == model.sampler.sample(0)
    # fixed paths under their own keys, the random one under "_random" keys only
    per_path = [stats[f"loss_{p}"] for p in drawn.fixed] + [stats["loss_random"]]
    assert torch.allclose(stats["loss"], sum(per_path))
    for key in ("loss", "loss_ctc", "acc"):
        assert {f"{key}_{p}" for p in drawn.fixed} | {f"{key}_random"} <= set(stats)
        assert f"{key}_{drawn.random[0]}" not in stats
    assert int(weight) == 3
    assert int(model.sampler_step) == 1
    # The encoder is back on its default subsystem after the step.
    assert model.encoder.active_subsystem == model.space.largest
    loss.backward()
    enc = model.encoder
    assert enc.w1[1].weight.grad is not None  # depth 2 ran (largest)
    assert enc.scale["int4"].grad is not None  # int4 ran (smallest)


def test_draw_weights_reach_the_sampler_from_model_conf() -> None:
    model = build(sampling="sandwich", num_random=1, draw_weights={"d1-w1-fp": 50})
    drawn = [str(model.sampler.draw(t).random[0]) for t in range(200)]
    assert drawn.count("d1-w1-fp") > 150  # 50 of 50 + 4 other weights: 185 expected
    with pytest.raises(ValueError, match=r"draw_weights names 'd2-w1-fp', which is never "
                                         r"drawn here"):
        build(sampling="sandwich", num_random=1, draw_weights={"d2-w1-fp": 2})


def test_path_loss_equals_single_subsystem_stock_loss() -> None:
    """Each path's loss is exactly the stock ESPnetASRModel loss of that subsystem."""
    model = build(sampling="explicit", subsystems=["d1-w1-int4", "d2-w0.5-fp"])
    model.train()
    b = batch()
    _, stats, _ = step(model, b)
    for sub in ("d1-w1-int4", "d2-w0.5-fp"):
        with model.encoder.use_subsystem(sub):
            ref, _, _ = super(ESPnetAllInOneASRModel, model).forward(
                **{k: v.clone() for k, v in b.items()}
            )
        assert torch.allclose(stats[f"loss_{sub}"], ref.detach(), atol=1e-5), sub


def test_path_weights_weight_the_sum() -> None:
    model = build(sampling="explicit", subsystems=["d2-w1-fp", "d1-w0.5-int4"],
                  path_weights=[1.0, 0.25])
    model.train()
    _, stats, _ = model(**batch())
    expect = stats["loss_d2-w1-fp"] + 0.25 * stats["loss_d1-w0.5-int4"]
    assert torch.allclose(stats["loss"], expect)


@pytest.mark.parametrize("ctc_weight", [1.0, 0.3])
def test_distillation_adds_kl_to_students_only(ctc_weight: float) -> None:
    plain, distilled = plain_and_variant({"ctc_weight": ctc_weight, "sampling": "all"},
                                         distill_weight=0.5, distill_temperature=2.0)
    b = batch()
    _, s0, _ = step(plain, b)
    _, s1, _ = step(distilled, b)
    teacher = "d2-w1-fp"
    assert f"kl_{teacher}" not in s1
    assert torch.allclose(s0[f"loss_{teacher}"], s1[f"loss_{teacher}"])
    students = [str(s) for s in distilled.sampler.sample(0) if str(s) != teacher]
    assert len(students) == 7
    for sub in students:
        kl = s1[f"kl_{sub}"]
        assert kl > 0
        assert torch.allclose(s1[f"loss_{sub}"], s0[f"loss_{sub}"] + 0.5 * kl, atol=1e-5)


def test_distillation_joins_after_its_start_step() -> None:
    plain, delayed = plain_and_variant({"sampling": "all"}, distill_weight=0.5,
                                       distill_start_steps=1)
    b = batch()
    _, s0, _ = step(plain, b)
    _, first, _ = step(delayed, b)
    _, second, _ = step(delayed, b)
    student = "d1-w0.5-int4"
    assert first[f"kl_{student}"] > 0  # logged before it counts
    assert torch.allclose(first[f"loss_{student}"], s0[f"loss_{student}"])
    assert torch.allclose(second[f"loss_{student}"], s0[f"loss_{student}"]
                          + 0.5 * second[f"kl_{student}"], atol=1e-5)
    with pytest.raises(ValueError, match="distill_start_steps must be an integer >= 0, "
                                         "got 1.5"):
        build(distill_weight=0.5, distill_start_steps=1.5)


def test_distillation_sends_no_gradient_into_teacher_outputs() -> None:
    teacher = torch.randn(2, 5, 7, requires_grad=True)
    student = torch.randn(2, 5, 7, requires_grad=True)
    mask = length_mask(torch.tensor([5, 3]), 5)
    masked_kl(teacher, student, mask, 2.0).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    assert student.grad[1, 3:].abs().sum() == 0  # padded frames get nothing


def test_masked_kl_matches_reference() -> None:
    t, s = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = length_mask(torch.tensor([6, 4]), 6)
    temp = 1.5
    ref = 0.0
    for b, n in enumerate([6, 4]):
        ref += torch.nn.functional.kl_div(
            torch.log_softmax(s[b, :n] / temp, -1), torch.log_softmax(t[b, :n] / temp, -1),
            log_target=True, reduction="sum",
        )
    assert math.isclose(float(masked_kl(t, s, mask, temp)), float(ref / 2 * temp**2),
                        rel_tol=1e-5)
    assert float(masked_kl(t, t, mask)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        masked_kl(t, s[:, :5], mask)


def test_validation_reports_each_subsystem_and_plain_largest() -> None:
    model = build(valid_subsystems=["d1-w0.5-int4", "d2-w1-fp", "d1-w1-fp"])
    model.eval()
    with torch.no_grad():
        loss, stats, _ = model(**batch())
    for sub in ("d1-w0.5-int4", "d2-w1-fp", "d1-w1-fp"):
        for key in ("loss", "acc", "cer_ctc", "loss_ctc", "loss_att", "cer", "wer"):
            assert f"{key}_{sub}" in stats, (key, sub)
    assert torch.equal(stats["loss"], stats["loss_d2-w1-fp"])
    assert torch.equal(stats["acc"], stats["acc_d2-w1-fp"])
    assert torch.equal(loss, stats["loss_d2-w1-fp"])
    assert not torch.equal(stats["loss_d1-w0.5-int4"], stats["loss_d2-w1-fp"])
    assert int(model.sampler_step) == 0  # validation draws nothing


def test_ctc_only_validation_leaves_out_what_it_cannot_compute() -> None:
    """No attention decoder: no acc/cer/wer/loss_att keys (stock ESPnet leaves them
    out; a None would print as nan in every validation line), CTC CER per subsystem."""
    model = build(ctc_weight=1.0, valid_subsystems=["d1-w0.5-int4", "d2-w1-fp"],
                  report_cer=True)
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(**batch())
    for sub in ("d1-w0.5-int4", "d2-w1-fp"):
        assert {k for k in stats if k.endswith(f"_{sub}")} == {
            f"{key}_{sub}" for key in ("loss", "loss_ctc", "cer_ctc")}
        assert float(stats[f"cer_ctc_{sub}"]) >= 0.0  # an untrained model inserts a lot
    assert all(v is not None and not torch.isnan(torch.as_tensor(v)).any()
               for v in stats.values())


def test_default_valid_subsystems_are_largest_and_smallest() -> None:
    model = build()
    assert [str(s) for s in model.valid_subsystems] == ["d2-w1-fp", "d1-w0.5-int4"]


def test_sampler_step_is_in_the_checkpoint_and_resumes(tmp_path) -> None:
    model = build(sampling="random", num_random=2)
    model.train()
    for _ in range(3):
        model(**batch())
    state = model.state_dict()
    assert int(state["sampler_step"]) == 3
    log = tmp_path / "paths.{rank}.log"
    resumed = build(sampling="random", num_random=2, seed=1, sampling_log=str(log))
    resumed.load_state_dict(state)
    resumed.train()
    _, stats, _ = resumed(**batch())
    want = ",".join(map(str, model.sampler.sample(3)))
    assert (tmp_path / "paths.0.log").read_text() == f"rank=0 step=3 paths={want}\n"
    # every path of "random" is drawn: one averaged key per stat, no per-subsystem keys
    assert {k for k in stats if k.startswith("loss")} == {
        "loss", "loss_random", "loss_ctc_random", "loss_att_random"}
    assert int(resumed.sampler_step) == 4


def test_random_paths_are_averaged_and_every_key_is_reported_every_step() -> None:
    """ESPnet logs nan for a key missing from a log window: the keys never change."""
    model = build(sampling="sandwich", num_random=2)
    model.train()
    keys = set()
    for step in range(6):
        _, stats, _ = model(**batch())
        assert all(torch.isfinite(v).all() for v in stats.values()), stats
        keys = keys or set(stats)
        assert set(stats) == keys, step
    random = model.sampler.draw(5).random
    assert len(random) == 2
    ref = build(sampling="explicit", subsystems=[str(s) for s in random])
    ref.load_state_dict(model.state_dict())
    ref.train()
    _, ref_stats, _ = ref(**batch())
    want = (ref_stats[f"loss_{random[0]}"] + ref_stats[f"loss_{random[1]}"]) / 2
    assert torch.allclose(stats["loss_random"], want, atol=1e-5)


def test_sampling_log_records_rank_step_paths(tmp_path) -> None:
    log = tmp_path / "paths.{rank}.log"
    model = build(sampling="sandwich", num_random=1, sampling_log=str(log))
    model.train()
    model(**batch())
    model(**batch())
    lines = (tmp_path / "paths.0.log").read_text().splitlines()
    assert lines == [
        f"rank=0 step={t} paths={','.join(map(str, model.sampler.sample(t)))}"
        for t in range(2)
    ]


def test_training_reduces_every_path_loss() -> None:
    model = build(ctc_weight=1.0, sampling="all", distill_weight=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    b = batch(n=2, frames=12)
    model.eval()
    with torch.no_grad():
        _, before, _ = step(model, b)
    model.train()
    for _ in range(20):
        loss, _, _ = step(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, after, _ = step(model, b)
    for sub in model.valid_subsystems:
        assert after[f"loss_{sub}"] < 0.5 * before[f"loss_{sub}"], sub


# --- bad input: clear errors at build time -----------------------------------


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown sampling strategy 'best'.*sandwich, all, random, explicit"):
        build(sampling="best")


def test_explicit_outside_space() -> None:
    with pytest.raises(SubsystemError, match=r"d3-w1-fp is not in this model's search space: depth 3 \(valid: 1, 2\)"):
        build(sampling="explicit", subsystems=["d3-w1-fp"])
    with pytest.raises(SubsystemError, match=r"precision int2 \(valid: int4, fp\)"):
        build(valid_subsystems=["d1-w1-int2"])


def test_distillation_without_teacher() -> None:
    with pytest.raises(ValueError, match="needs a teacher path: the largest subsystem d2-w1-fp"):
        build(sampling="random", num_random=2, distill_weight=1.0)
    with pytest.raises(ValueError, match="needs a teacher path"):
        build(sampling="explicit", subsystems=["d1-w1-fp"], distill_weight=1.0)
    build(sampling="explicit", subsystems=["d1-w1-fp", "d2-w1-fp"], distill_weight=1.0)


def test_path_weights_mismatch() -> None:
    with pytest.raises(ValueError, match="path_weights has 2 entries but sampling 'sandwich' runs 4"):
        build(sampling="sandwich", num_random=2, path_weights=[1.0, 1.0])


def test_bad_distill_settings_and_encoder() -> None:
    with pytest.raises(ValueError, match="distill_temperature must be > 0, got 0"):
        build(distill_weight=1.0, distill_temperature=0)
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        build(distill_weight=-1.0)
    from espnet2.asr.encoder.rnn_encoder import RNNEncoder

    with pytest.raises(ValueError, match="needs an elastic encoder.*got RNNEncoder"):
        build(encoder=RNNEncoder(FEAT_DIM, num_layers=1, hidden_size=8, output_size=8))


def test_real_encoder_step() -> None:
    """The model with the real ElasticConformerEncoder: paths differ, grads reach all blocks."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    enc = ElasticConformerEncoder(
        FEAT_DIM * 5, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
        input_layer="linear", cnn_module_kernel=3, depths=[1, 2], widths=[0.5, 1.0],
        precisions=["int4", "fp"], dropout_rate=0.0, positional_dropout_rate=0.0,
    )
    model = build(encoder=enc, sampling="all", distill_weight=0.5)
    model.train()
    b = batch()
    b["speech"] = b["speech"].repeat(1, 1, 5)
    loss, stats, _ = model(**b)
    losses = {str(s): float(stats[f"loss_{s}"]) for s in model.space.ordered()}
    assert len(set(losses.values())) == 8, losses  # every subsystem computes something else
    loss.backward()
    assert all(p.grad is not None for n, p in model.encoder.named_parameters()), [
        n for n, p in model.encoder.named_parameters() if p.grad is None
    ]
    assert model.encoder.active_subsystem == model.space.largest


def shared_and_separate(make) -> tuple:
    """``make(True)`` and ``make(False)`` (front shared or not) with the same weights, in
    training mode, and a batch of 20 features a frame for a conv2d front."""
    shared, separate = make(True), make(False)
    separate.load_state_dict(shared.state_dict())
    shared.train()
    separate.train()
    b = batch(frames=40)
    b["speech"] = b["speech"].repeat(1, 1, 5)
    return shared, separate, b


def assert_same_gradients(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_shared_input_layer_runs_once_and_changes_nothing() -> None:

    def make(share: bool) -> ESPnetAllInOneASRModel:
        return build(encoder=_small_conformer("conv2d"), sampling="all",
                     share_input_layer=share, seed=3)

    shared, separate, b = shared_and_separate(make)
    calls = []
    shared.encoder.embed.conv.register_forward_hook(lambda *_: calls.append(1))
    loss_a, stats_a, _ = step(shared, b)
    loss_b, stats_b, _ = step(separate, b)
    assert len(calls) == 1  # 8 paths, one subsampling
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert stats_a.keys() == stats_b.keys()
    for key in stats_a:
        assert torch.allclose(stats_a[key], stats_b[key], rtol=1e-5), key
    loss_a.backward()
    loss_b.backward()
    assert_same_gradients(shared, separate)
    assert "forward" not in vars(shared.encoder.embed)  # patch removed after the step


def test_print_config_lists_stock_and_allinone_options() -> None:
    from espnet2.utils.get_default_kwargs import get_default_kwargs

    defaults = get_default_kwargs(ESPnetAllInOneASRModel)
    assert defaults["ctc_weight"] == 0.5 and defaults["lsm_weight"] == 0.0  # stock
    assert defaults["sampling"] == "sandwich" and defaults["distill_weight"] == 0.0  # ours
    assert defaults["valid_subsystems"] is None and defaults["num_random"] == 1


def test_the_test_encoder_keeps_the_elastic_encoder_protocol() -> None:
    from espnet_allinone.encoders.protocol import ElasticEncoder, protocol_violations

    assert protocol_violations(TinyElasticEncoder, ElasticEncoder) == []
    assert isinstance(TinyElasticEncoder(FEAT_DIM).space, SearchSpace)


def test_float_warmup_runs_float_twins_first_then_the_quantized_paths() -> None:

    def make(warmup: int) -> ESPnetAllInOneASRModel:
        return build(encoder=_small_conformer("linear"), sampling="all",
                     float_warmup_steps=warmup, seed=4)

    warm, plain = make(1), make(0)
    plain.load_state_dict(warm.state_dict())
    b = batch()
    b["speech"] = b["speech"].repeat(1, 1, 5)
    quantizer = warm.encoder.encoders[0].feed_forward.w_1.weight_quantizer
    warm.train()
    plain.train()
    _, stats, _ = step(warm, b)
    assert not bool(quantizer.initialized_int4)  # step 0: no quantizer ran
    _, plain_stats, _ = step(plain, b)
    # the int4 path's loss is its float twin's in the warm-up step
    assert torch.allclose(stats["loss_d2-w1-int4"], plain_stats["loss_d2-w1-fp"], rtol=1e-5)
    step(warm, b)
    assert bool(quantizer.initialized_int4)  # step 1: the quantized paths run
    with pytest.raises(ValueError, match="float_warmup_steps must be an integer >= 0, got -1"):
        make(-1)


def _small_conformer(input_layer: str):
    """A 2-block d=16 elastic Conformer: depth {1, 2} x width {0.5, 1} x {int4, fp}."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    return ElasticConformerEncoder(
        FEAT_DIM * 5, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
        input_layer=input_layer, cnn_module_kernel=3, depths=[1, 2], widths=[0.5, 1.0],
        precisions=["int4", "fp"], dropout_rate=0.0, positional_dropout_rate=0.0,
    )


def test_each_path_trains_its_output_layer_at_the_path_bits():
    """The CTC linear of a quantized path runs at ``part_precisions.output`` bits in the
    training step (as validation and extraction run it), not at the float model's: the
    path's losses are computed inside its record."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    enc = ElasticConformerEncoder(
        FEAT_DIM, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
        input_layer="linear", depths=[1, 2], precisions=["int2", "fp"],
        part_precisions={"output": "int8"}, quant_conf={"granularity": "channel"})
    model = build(ctc_weight=1.0, encoder=enc, sampling="sandwich", num_random=0)
    seen: list[int] = []
    model.ctc.ctc_lo.register_forward_pre_hook(lambda mod, _inp: seen.append(mod.bits))
    model.train()
    model(**batch())
    assert seen == [FLOAT_BITS, 8]  # d2-w1-fp, then d1-w1-int2 with its 8-bit CTC layer


def _ctc_logits(model: ESPnetAllInOneASRModel, sub: str, b: dict) -> tuple:
    """CTC logits and frame mask of ``sub`` on batch ``b``, computed outside the step."""
    feats, lengths = model._features(b["speech"], b["speech_lengths"])
    with model.encoder.use_subsystem(sub):
        enc, enc_lens, _ = model.encoder(feats, lengths)
    return model.ctc.ctc_lo(enc), length_mask(enc_lens, enc.size(1))


@pytest.mark.parametrize("with_twin", [False, True])
def test_twin_distillation_pulls_quantized_paths_to_their_float_twin(with_twin: bool) -> None:
    """``distill_twin_weight``: KL(float twin || quantized path) added to the quantized
    path's loss; the twin's logits come from the step when it ran, else from an extra
    forward of the twin: the same value either way."""
    paths = ["d1-w0.5-int4"] + (["d1-w0.5-fp"] if with_twin else [])
    plain, twin = plain_and_variant({"ctc_weight": 1.0, "sampling": "explicit", "subsystems": paths},
                                    distill_twin_weight=0.5, distill_temperature=2.0)
    b = batch()
    _, s0, _ = step(plain, b)
    _, s1, _ = step(twin, b)
    with torch.no_grad():
        teacher, mask = _ctc_logits(twin, "d1-w0.5-fp", b)
        student, _ = _ctc_logits(twin, "d1-w0.5-int4", b)
    expect = masked_kl(teacher, student, mask, 2.0)
    assert float(expect) > 0
    # a small KL of nearly equal logits: float32 cancellation in t - s
    assert torch.allclose(s1["kl_twin_d1-w0.5-int4"], expect, rtol=1e-3, atol=1e-7)
    assert torch.allclose(s1["loss_d1-w0.5-int4"],
                          s0["loss_d1-w0.5-int4"] + 0.5 * s1["kl_twin_d1-w0.5-int4"], rtol=1e-6)
    if with_twin:
        assert float(s1["kl_twin_d1-w0.5-fp"]) == 0.0  # a float path is its own twin
        assert torch.allclose(s1["loss_d1-w0.5-fp"], s0["loss_d1-w0.5-fp"])


def test_twin_distillation_waits_for_the_quantized_paths_and_its_start() -> None:
    """No twin KL (and no extra forward) while every path runs in float, nor before
    ``distill_start_steps``."""
    for conf in ({"float_warmup_steps": 1}, {"distill_start_steps": 1}):
        model = build(ctc_weight=1.0, sampling="explicit", subsystems=["d2-w1-int4"],
                      distill_twin_weight=1.0, **conf)
        model.train()
        _, first, _ = step(model, batch())
        _, second, _ = step(model, batch())
        assert float(first["kl_twin_d2-w1-int4"]) == 0.0, conf
        assert float(second["kl_twin_d2-w1-int4"]) > 0, conf


def test_twin_teacher_forward_never_feeds_the_shared_front_without_gradient() -> None:
    """The twin's extra forward runs without gradient; a later path at the twin's front
    precision recomputes the front rather than reuse that output, so sharing the
    front changes no gradient."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    def make(share: bool) -> ESPnetAllInOneASRModel:
        enc = ElasticConformerEncoder(
            FEAT_DIM * 5, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
            input_layer="conv2d", cnn_module_kernel=3, depths=[1, 2], precisions=["int4", "fp"],
            part_precisions={"front": "same"}, dropout_rate=0.0, positional_dropout_rate=0.0)
        return build(ctc_weight=1.0, encoder=enc, sampling="explicit", seed=3,
                     subsystems=["d2-w1-int4", "d1-w1-fp"], distill_twin_weight=1.0,
                     share_input_layer=share)

    shared, separate, b = shared_and_separate(make)
    loss_a, stats_a, _ = step(shared, b)
    loss_b, _, _ = step(separate, b)
    assert float(stats_a["kl_twin_d2-w1-int4"]) > 0
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    assert_same_gradients(shared, separate)


def test_bad_twin_distillation_settings() -> None:
    with pytest.raises(ValueError, match="distill_twin_weight must be >= 0, got -1"):
        build(distill_twin_weight=-1.0)
    enc = TinyElasticEncoder(FEAT_DIM, precisions=("int4", "int8"))
    with pytest.raises(ValueError, match=r"distill_twin_weight 0.5 needs float twins of "
                                         r"quantized paths, but encoder_conf.precisions is "
                                         r"\['int4', 'int8'\]"):
        build(encoder=enc, distill_twin_weight=0.5)


def test_paths_with_different_front_channels_never_share_the_front_output() -> None:
    """With ``elastic_front`` two paths at the same front bits but different widths run
    different fronts: sharing computes each once and changes no loss or gradient."""
    from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

    def make(share: bool) -> ESPnetAllInOneASRModel:
        enc = ElasticConformerEncoder(
            FEAT_DIM * 5, output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
            input_layer="conv2d", cnn_module_kernel=3, depths=[1, 2], widths=[0.5, 1],
            precisions=["int4", "fp"], part_precisions={"front": "same"}, elastic_front=True,
            dropout_rate=0.0, positional_dropout_rate=0.0)
        return build(ctc_weight=1.0, encoder=enc, sampling="explicit", seed=3,
                     subsystems=["d2-w1-int4", "d1-w0.5-int4"], share_input_layer=share)

    shared, separate, b = shared_and_separate(make)
    assert shared.encoder.resolve("d1-w0.5-int4").front_channels == 8
    loss_a, stats_a, _ = step(shared, b)
    loss_b, stats_b, _ = step(separate, b)
    for sub in ("d2-w1-int4", "d1-w0.5-int4"):
        assert torch.allclose(stats_a[f"loss_{sub}"], stats_b[f"loss_{sub}"], rtol=1e-5)
    loss_a.backward()
    loss_b.backward()
    assert_same_gradients(shared, separate)
