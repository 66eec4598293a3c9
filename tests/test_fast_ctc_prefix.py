"""The loop-free CTC prefix scorer (``espnet_allinone.decoding.ctc_prefix``) against ESPnet's.

Speed is measured in benchmarks/bench_ctc_prefix.py; here only agreement.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH
from espnet.nets.scorers.ctc import CTCPrefixScorer
from helpers.ctc_search import ctc_prefix_search, peaky_log_posteriors
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.decoding.ctc_prefix import (
    FastCTCPrefixScorer,
    FastCTCPrefixScoreTH,
    PendingForward,
)
from espnet_allinone.decoding.prefix_impl import use_ctc_prefix_impl

VOCAB = 30
EOS = VOCAB - 1
LOGZERO = -1e9  # below this both implementations hold "log zero" (-1e10 plus rounding)


def _batch_state(states: list) -> tuple:
    """What CTCPrefixScorer.batch_score_partial hands the implementation."""
    return (torch.stack([s[0] for s in states], 2), torch.stack([s[1] for s in states]),
            states[0][2], states[0][3])


def _close_r(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    zero = (a < LOGZERO) & (b < LOGZERO)
    return bool(torch.allclose(a[~zero], b[~zero], rtol=rtol, atol=1e-4))


def _walk(x: torch.Tensor, xlens: torch.Tensor, n_hyps: int, steps: int, gen: torch.Generator,
          rtol: float) -> None:
    """Score ``steps`` labels with both implementations, each from its own states, the
    candidates alternately all tokens and a pre-beam of 8; scores equal from the same
    state, from each one's own within 1e-4 (relative where above 1: ESPnet's float32 loop
    rounds at every frame), forward variables within ``rtol``."""
    n_bh = x.shape[0] * n_hyps
    ours = FastCTCPrefixScoreTH(x.clone(), xlens, 0, EOS)
    ref = CTCPrefixScoreTH(x.clone(), xlens, 0, EOS)
    pick = CTCPrefixScorer(None, EOS).select_state
    y = torch.full((n_bh, 1), EOS)
    state_ours = state_ref = None
    for step in range(steps):
        ids = None if step % 2 == 0 else torch.rand(n_bh, VOCAB, generator=gen).topk(8)[1]
        score_ours, new_ours = ours(y, state_ours, ids)
        score_ref, new_ref = ref(y, state_ref, ids)
        score_same, _ = ours(y, state_ref, ids)
        assert torch.equal(score_same, score_ref), step
        assert ((score_ours - score_ref).abs() <= 1e-4 * score_ref.abs().clamp(min=1)).all(), step
        assert _close_r(new_ours[0], new_ref[0], rtol), step
        if ids is None:
            tokens = torch.randint(1, VOCAB - 1, (n_bh,), generator=gen)
        else:
            tokens = ids[torch.arange(n_bh), torch.randint(0, 8, (n_bh,), generator=gen)]
            tokens[tokens == 0] = 1
        state_ours = _batch_state([pick(new_ours, i, int(t)) for i, t in enumerate(tokens)])
        state_ref = _batch_state([pick(new_ref, i, int(t)) for i, t in enumerate(tokens)])
        y = torch.cat((y, tokens[:, None]), 1)


@pytest.mark.parametrize("frames", [1, 2, 9, 60, 200])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scores_and_forward_variables_equal_espnets(frames, dtype, one_thread):
    gen = torch.Generator().manual_seed(frames)
    x = peaky_log_posteriors(frames, VOCAB, gen).to(dtype)[None]
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    _walk(x, torch.tensor([frames]), n_hyps=4, steps=min(frames, 12), gen=gen, rtol=rtol)


def test_padded_batch_of_utterances_equals_espnets(one_thread):
    gen = torch.Generator().manual_seed(1)
    x = torch.stack([peaky_log_posteriors(50, VOCAB, gen), peaky_log_posteriors(50, VOCAB, gen)])
    _walk(x.double(), torch.tensor([50, 37]), n_hyps=3, steps=10, gen=gen, rtol=1e-9)


def test_pending_forward_variables_are_the_eager_ones(one_thread):
    gen = torch.Generator().manual_seed(2)
    scorer = FastCTCPrefixScorer(torch.nn.Identity(), EOS)
    scorer.ctc.log_softmax = lambda x: x
    scorer.batch_init_state(peaky_log_posteriors(40, VOCAB, gen))
    y = torch.tensor([[EOS, 3], [EOS, 5]])
    eager = FastCTCPrefixScoreTH(scorer.impl.x[0].transpose(0, 1).clone(), torch.tensor([40]),
                                 0, EOS)
    state = _batch_state([(torch.full((40, 2), -1e10).index_fill_(1, torch.tensor([1]), -3.0)
                           .cumsum(0), torch.zeros(VOCAB), 0, 0)] * 2)
    for ids in (None, torch.tensor([[3, 4, 7], [5, 9, 1]])):
        _, lazy_state = scorer.impl(y, state, ids)
        _, eager_state = eager(y, state, ids)
        for i, token in ((0, 4), (1, 5), (1, 9)):
            pending, *_ = scorer.select_state(lazy_state, i, token)
            assert isinstance(pending, PendingForward)
            want = CTCPrefixScorer.select_state(scorer, eager_state, i, token)[0]
            assert torch.equal(pending.tensor(), want)


@pytest.mark.parametrize("beam", [1, 4])
def test_beam_search_hypotheses_identical_to_espnets(beam, one_thread):
    gen = torch.Generator().manual_seed(beam)
    for utt in range(50):
        frames = int(torch.randint(15, 60, (), generator=gen))
        log_probs = peaky_log_posteriors(frames, VOCAB, gen)
        ours = ctc_prefix_search(log_probs, "fast", beam, nbest=beam)
        ref = ctc_prefix_search(log_probs, "espnet", beam, nbest=beam)
        assert [h for h, _ in ours] == [h for h, _ in ref], utt
        assert max(abs(a - b) for (_, a), (_, b) in zip(ours, ref)) < 1e-3, utt


@pytest.fixture(scope="module")
def toy_model_dir() -> Path:
    """A random all-in-one model dir (config.yaml, model.pth): CTC only, char tokens."""
    return shared_toy_experiment()["config"].parent


@torch.no_grad()
def test_speech2text_decodes_the_same_text_with_either_impl(toy_model_dir, one_thread):
    from espnet2.bin.asr_inference import Speech2Text

    s2t = Speech2Text(asr_train_config=toy_model_dir / "config.yaml",
                      asr_model_file=toy_model_dir / "model.pth", ctc_weight=1.0, beam_size=2)
    gen = torch.Generator().manual_seed(0)
    for n in (8000, 20000):
        speech = 0.1 * torch.randn(n, generator=gen)
        assert use_ctc_prefix_impl(s2t, "espnet")
        assert type(s2t.beam_search.scorers["ctc"]) is CTCPrefixScorer
        ref = [(text, token_int) for text, _, token_int, _ in s2t(speech)]
        assert use_ctc_prefix_impl(s2t, "fast")
        assert type(s2t.beam_search.part_scorers["ctc"]) is FastCTCPrefixScorer
        ours = [(text, token_int) for text, _, token_int, _ in s2t(speech)]
        assert ours == ref and ref[0][1], n


def _lines(path: Path) -> dict[str, str]:
    return dict(line.partition(" ")[::2] for line in path.read_text().splitlines())


def test_both_entry_points_decode_the_same_with_either_impl(toy_model_dir, tiny_corpus,
                                                             tmp_path, one_thread):
    import espnet2.bin.asr_inference as espnet_inference

    from espnet_allinone.bin import asr_inference, asr_inference_multi

    wav_scp = tiny_corpus / "test" / "wav.scp"
    keys = tmp_path / "keys.scp"
    keys.write_text("".join(wav_scp.read_text().splitlines(keepends=True)[:3]))
    common = ["--data_path_and_name_and_type", f"{wav_scp},speech,sound", "--key_file",
              str(keys), "--batch_size", "1", "--ctc_weight", "1.0", "--beam_size", "1"]
    original = espnet_inference.Speech2Text
    assert asr_inference_multi.main(["--model_dirs", str(toy_model_dir), "--output_dir",
                                     str(tmp_path / "fast"), *common]) == 0
    assert espnet_inference.Speech2Text is original
    assert asr_inference.main(["--ctc_prefix_impl", "espnet", "--output_dir",
                               str(tmp_path / "espnet"), "--asr_train_config",
                               str(toy_model_dir / "config.yaml"), "--asr_model_file",
                               str(toy_model_dir / "model.pth"), *common]) == 0
    fast = _lines(tmp_path / "fast" / toy_model_dir.name / "1best_recog" / "token_int")
    ref = _lines(tmp_path / "espnet" / "1best_recog" / "token_int")
    assert len(ref) == 3 and fast == ref


def test_a_bad_impl_is_one_error_line_naming_it_and_the_valid_ones(tmp_path, capsys):
    from espnet_allinone.bin import asr_inference, asr_inference_multi

    assert asr_inference_multi.main(["--ctc_prefix_impl", "loopy", "--model_dirs",
                                     str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert asr_inference.main(["--ctc_prefix_impl", "loopy", "--output_dir", str(tmp_path / "o"),
                               "--data_path_and_name_and_type", "x,speech,sound"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert [line.split(":")[0] for line in lines] == ["asr_inference_multi", "asr_inference"]
    for line in lines:
        assert "'loopy'" in line and "fast" in line and "espnet" in line, line
    assert not (tmp_path / "o").exists()
