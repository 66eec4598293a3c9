"""Unfolding: a seed of S blocks run as deeper logical stacks (Li et al. 2025)."""

from __future__ import annotations

import pytest
import torch
import yaml
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from helpers.toy_experiment import (
    DEFAULT_ENCODER_CONF,
    write_toy_experiment,
)

from espnet_allinone.elastic.unfolding import unfold_schedule
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder
from espnet_allinone.encoders.switching import model_probe_input
from espnet_allinone.export.extract import Extractor
from espnet_allinone.subsystem import SubsystemError

STOCK = {
    "output_size": 32, "attention_heads": 4, "linear_units": 64, "cnn_module_kernel": 5,
    "input_layer": "linear", "macaron_style": True, "rel_pos_type": "latest",
    "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
}


def _unfolded(position_stats: bool = True, **kw) -> ElasticConformerEncoder:
    torch.manual_seed(0)
    conf = {"num_blocks": 6, "seed_blocks": 2, "depths": [2, 4, 6], "widths": [0.5, 1],
            "precisions": ["int4", "fp"], "elastic_conv": True,
            "quant_conf": {"granularity": "channel"}, **kw}
    return ElasticConformerEncoder(input_size=10, **STOCK, **conf,
                                   position_stats=position_stats)


def _perturb_stats(enc: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for name, buf in enc.named_buffers():
        if name.rsplit(".", 1)[-1].startswith("running_mean"):
            buf.copy_(0.2 * torch.randn(buf.shape, generator=gen))
        elif name.rsplit(".", 1)[-1].startswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)


def _stock_copy(enc: ElasticConformerEncoder, depth: int) -> ConformerEncoder:
    """A stock Conformer of ``depth`` blocks, block i a copy of seed block i mod S, with the
    BatchNorm statistics of that logical position."""
    stock = ConformerEncoder(input_size=10, **STOCK, num_blocks=depth).eval()
    state = {}
    seed = enc.state_dict()
    for key, value in seed.items():
        if not key.startswith("encoders.") or "quantizer" in key:
            if "quantizer" not in key:
                state[key] = value
            continue
        _, block, rest = key.split(".", 2)
        for i in range(depth):
            if i % enc.seed_blocks != int(block):
                continue
            position = i // enc.seed_blocks
            leaf = rest.rsplit(".", 1)[-1]
            if "_c" in leaf or "_r" in leaf:
                continue  # narrower widths' and other positions' statistics
            name = rest
            if position and leaf.startswith(("running_", "num_batches")):
                name = f"{rest}_r{position}"
                value_at = seed.get(f"encoders.{block}.{name}", value)
            else:
                value_at = value
            state[f"encoders.{i}.{rest}"] = value_at
    stock.load_state_dict(state, strict=True)
    return stock


@pytest.mark.parametrize("rule", ["repeat", "blockwise"])
def test_schedules(rule):
    assert unfold_schedule(6, 2, "repeat") == (0, 1, 0, 1, 0, 1)
    assert unfold_schedule(6, 2, "blockwise") == (0, 0, 0, 1, 1, 1)
    assert unfold_schedule(4, None) == (0, 1, 2, 3)
    enc = _unfolded(unfold=rule)
    assert enc.resolve("d6-w1-fp").schedule == unfold_schedule(6, 2, rule)


def _record_norm_calls(enc: ElasticConformerEncoder, calls: list) -> list:
    """Hooks appending (physical block, statistics bank, input) to ``calls`` each time a
    seed block's conv BatchNorm runs; returns the handles."""
    def hook(block):
        return lambda norm, args: calls.append((block, norm.repeat, args[0].detach().clone()))

    return [enc.encoders[b].conv_module.norm.register_forward_pre_hook(hook(b))
            for b in range(enc.encoders.num_blocks)]


# (physical block, statistics bank) of each logical position, by the documented rule
# (UNFOLD_RULES' docstring): repeat runs seed block i mod S, blockwise seed block i // (d/S);
# a block's n-th occurrence uses its n-th bank.
POSITIONS = {
    "repeat": {2: [(0, 0), (1, 0)],
               4: [(0, 0), (1, 0), (0, 1), (1, 1)],
               6: [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]},
    "blockwise": {2: [(0, 0), (1, 0)],
                  4: [(0, 0), (0, 1), (1, 0), (1, 1)],
                  6: [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]},
}


@pytest.mark.parametrize("rule", ["repeat", "blockwise"])
@torch.no_grad()
def test_each_logical_position_runs_the_documented_block_and_bank(rule):
    """The block and statistics bank each logical position runs, at every depth."""
    assert unfold_schedule(6, 3, "repeat") == (0, 1, 2, 0, 1, 2)
    assert unfold_schedule(6, 3, "blockwise") == (0, 0, 1, 1, 2, 2)
    assert unfold_schedule(8, 2, "repeat") == (0, 1, 0, 1, 0, 1, 0, 1)
    assert unfold_schedule(8, 2, "blockwise") == (0, 0, 0, 0, 1, 1, 1, 1)
    assert unfold_schedule(3, 1, "blockwise") == unfold_schedule(3, 1, "repeat") == (0, 0, 0)
    enc = _unfolded(unfold=rule).eval()
    calls: list = []
    handles = _record_norm_calls(enc, calls)
    x, lengths = torch.randn(2, 30, 10), torch.tensor([30, 22])
    for depth, want in POSITIONS[rule].items():
        calls.clear()
        with enc.use_subsystem(f"d{depth}-w1-fp"):
            enc(x, lengths)
        assert [(block, bank) for block, bank, _ in calls] == want, depth
        assert list(enc.resolve(f"d{depth}-w1-fp").schedule) == [b for b, _ in want]
    for h in handles:
        h.remove()


@pytest.mark.parametrize("rule", ["repeat", "blockwise"])
@torch.no_grad()
def test_training_updates_exactly_the_banks_of_the_positions_that_ran(rule):
    """Training-mode forwards at d4 (each seed block at 2 of the 6 positions) move banks
    0 and 1 of both blocks by their own inputs' batch statistics; bank 2 (positions d6
    alone runs) and the narrower width's banks are untouched."""
    enc = _unfolded(unfold=rule).train()
    norms = {n: b.clone() for n, b in enc.named_buffers() if ".conv_module.norm." in n}
    calls: list = []
    handles = _record_norm_calls(enc, calls)
    gen = torch.Generator().manual_seed(3)
    with enc.use_subsystem("d4-w1-fp"):
        for _ in range(3):
            enc(torch.randn(2, 30, 10, generator=gen), torch.tensor([30, 22]))
    for h in handles:
        h.remove()
    assert [(b, r) for b, r, _ in calls] == POSITIONS[rule][4] * 3
    ran = {f"encoders.{b}.conv_module.norm.{kind}{suffix}"
           for b in (0, 1) for suffix in ("", "_r1")
           for kind in ("running_mean", "running_var", "num_batches_tracked")}
    now = dict(enc.named_buffers())
    assert {n for n, before in norms.items() if not torch.equal(now[n], before)} == ran
    # each bank is the stock momentum update by the inputs its own positions saw
    for block in (0, 1):
        for bank, suffix in ((0, ""), (1, "_r1")):
            mean, var = torch.zeros(32), torch.ones(32)
            for b, r, inp in calls:
                if (b, r) == (block, bank):
                    mean = 0.9 * mean + 0.1 * inp.mean((0, 2))
                    var = 0.9 * var + 0.1 * inp.var((0, 2), unbiased=True)
            prefix = f"encoders.{block}.conv_module.norm."
            assert torch.allclose(now[prefix + "running_mean" + suffix], mean, atol=1e-6)
            assert torch.allclose(now[prefix + "running_var" + suffix], var, atol=1e-5)
            assert now[prefix + "num_batches_tracked" + suffix] == 3


@torch.no_grad()
def test_unfolded_float_equals_a_stock_conformer_holding_seed_copies():
    enc = _unfolded().eval()
    _perturb_stats(enc)
    x, lengths = torch.randn(2, 30, 10), torch.tensor([30, 22])
    for depth in (2, 4, 6):
        with enc.use_subsystem(f"d{depth}-w1-fp"):
            out, _, _ = enc(x, lengths)
        ref, _, _ = _stock_copy(enc, depth)(x, lengths)
        assert (out - ref).abs().max() <= 1e-6, depth


def test_parameters_do_not_grow_with_depth_only_position_statistics_do():
    enc = _unfolded()
    assert len(enc.blocks) == 2
    assert enc.num_params("d2-w1-fp") == enc.num_params("d4-w1-fp") == enc.num_params("d6-w1-fp")
    stats = 2 * 4 * 32  # mean + var, 4 bytes, 32 channels, per block
    assert enc.storage_bytes("d4-w1-fp") - enc.storage_bytes("d2-w1-fp") == 2 * stats
    shared = _unfolded(position_stats=False)
    assert shared.storage_bytes("d6-w1-fp") == shared.storage_bytes("d2-w1-fp")
    assert enc.storage_bytes("d6-w0.5-int4") < enc.storage_bytes("d6-w1-int4")  # still elastic


def test_every_position_sends_gradient_to_the_seed():
    enc = _unfolded(position_stats=False).eval()
    x, lengths = torch.randn(1, 20, 10), torch.tensor([20])
    with enc.use_subsystem("d6-w1-fp"):
        enc(x, lengths)[0].square().sum().backward()
    stock = _stock_copy(enc, 6)
    stock(x, lengths)[0].square().sum().backward()
    for name, p in enc.encoders[1].named_parameters():
        if "quantizer" in name:
            continue
        want = sum(dict(stock.encoders[i].named_parameters())[name].grad for i in (1, 3, 5))
        assert torch.allclose(p.grad, want, atol=1e-5), name


def test_bad_unfolding_options_name_the_valid_values():
    with pytest.raises(ValueError, match=r"seed_blocks 8 must be in 1\.\.num_blocks \(6\)"):
        _unfolded(seed_blocks=8)
    with pytest.raises(ValueError, match=r"depth\(s\) \[3\] cannot be made by unfolding a "
                       r"2-block seed; valid depths: 2, 4, 6"):
        _unfolded(depths=[2, 3])
    with pytest.raises(ValueError, match="unknown unfold 'spiral'; valid: repeat, blockwise"):
        _unfolded(unfold="spiral")
    with pytest.raises(SubsystemError, match=r"depth 8 \(valid: 2, 4, 6\)"):
        _unfolded().set_subsystem("d8-w1-fp")


def test_stacked_and_unfolded_checkpoints_do_not_cross_load():
    unfolded = _unfolded()
    stacked = ElasticConformerEncoder(input_size=10, **STOCK, num_blocks=6, depths=[2, 4, 6])
    with pytest.raises(RuntimeError, match="holds 6 encoder blocks, but this is an unfolded "
                       r"encoder with a 2-block seed \(seed_blocks 2\)"):
        unfolded.load_state_dict(stacked.state_dict(), strict=False)
    with pytest.raises(RuntimeError, match="holds 2 encoder blocks, but this is a stacked "
                       "encoder of 6 blocks"):
        stacked.load_state_dict(unfolded.state_dict(), strict=False)


@pytest.fixture(scope="module")
def unfolded_experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("unfold")
    conf = dict(DEFAULT_ENCODER_CONF, num_blocks=6, seed_blocks=2, depths=[2, 4, 6],
                precisions=["int4", "fp"])
    paths = write_toy_experiment(root / "aio", encoder_conf=conf)
    return root, Extractor(paths["config"], paths["model"])


@pytest.mark.parametrize("sub", ["d6-w1-fp", "d4-w0.5-int4"])
@torch.no_grad()
def test_extraction_stores_the_seed_once_and_speech2text_runs_it_unfolded(unfolded_experiment,
                                                                          sub):
    from espnet2.bin.asr_inference import Speech2Text

    root, extractor = unfolded_experiment
    result = extractor.extract(sub, root / "out")
    seed = extractor.extract(sub.replace(sub[:2], "d2"), root / "out")
    assert result.encoder == "packed_conformer"
    conf = yaml.safe_load((result.directory / "config.yaml").read_text())["encoder_conf"]
    depth = int(sub[1])
    assert conf["num_blocks"] == 2 and conf["block_schedule"] == list(unfold_schedule(depth, 2))
    # bytes on disk are the seed's plus the per-position statistics, not the depth's
    extra = result.exact_bytes - seed.exact_bytes
    assert 0 < extra <= 2 * 4 * 64 * (depth // 2 - 1) * 2
    assert abs(result.disk_bytes - seed.disk_bytes - extra) < 4096
    s2t = Speech2Text(asr_train_config=result.directory / "config.yaml",
                      asr_model_file=result.directory / "model.pth", ctc_weight=1.0)
    speech, lengths = model_probe_input(extractor.model, seed=2)
    with extractor.encoder.use_subsystem(sub):
        ref, _ = extractor.model.encode(speech, lengths)
    out, _ = s2t.asr_model.encode(speech, lengths)
    assert (out - ref).abs().max() <= 1e-5
    assert len(list(s2t.asr_model.encoder.encoders)) == depth
    state = torch.load(result.directory / "model.pth", weights_only=True)
    assert not any(k.startswith("encoder.encoders.2.") for k in state)  # the seed, once
    assert any(k.endswith("norm.running_mean_r1") for k in state)
