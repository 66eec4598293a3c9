"""Best-path CTC decoding in the recipe (``asr_inference_multi --ctc_greedy``)."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.bin.asr_inference_multi import main
from espnet_allinone.export.extract import Extractor


def _lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


@torch.no_grad()
def test_greedy_decoding_writes_the_collapsed_argmax_of_each_utterance(tiny_corpus, tmp_path):
    from espnet2.bin.asr_inference import Speech2Text

    toy = shared_toy_experiment()
    model_dir = Extractor(toy["config"], toy["model"]).extract(
        "d2-w1-int4", tmp_path / "ext", verify=False).directory
    wav_scp = tiny_corpus / "test" / "wav.scp"
    out = tmp_path / "out"
    assert main(["--ctc_greedy", "--model_dirs", str(model_dir), "--output_dir", str(out),
                 "--data_path_and_name_and_type", f"{wav_scp},speech,sound",
                 "--batch_size", "1"]) == 0
    best = out / model_dir.name / "1best_recog"
    token_int, text = _lines(best / "token_int"), _lines(best / "text")
    wavs = _lines(wav_scp)
    assert set(token_int) == set(text) == set(wavs)
    s2t = Speech2Text(asr_train_config=model_dir / "config.yaml",
                      asr_model_file=model_dir / "model.pth", ctc_weight=1.0)
    model = s2t.asr_model
    for utt, path in wavs.items():
        audio, _ = soundfile.read(path, dtype="float32")
        speech = torch.from_numpy(audio)[None]
        enc, _ = model.encode(speech, torch.tensor([speech.shape[1]]))
        ids = torch.unique_consecutive(model.ctc.argmax(enc)[0])
        want = [i for i in ids.tolist() if i != model.blank_id]
        assert token_int[utt] == " ".join(map(str, want)), utt
        tokens = s2t.converter.ids2tokens(want)
        assert text[utt] == s2t.tokenizer.tokens2text(tokens).strip(), utt
