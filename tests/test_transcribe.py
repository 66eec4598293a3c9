"""The onnxruntime path: same output as stock ESPnet, runs without torch, CLI.

A freshly initialised all-in-one model (the shared toy experiment) is cut
into fp, int8, int4 and int2 subsystems and decoded on the tiny synthesised
test set; every figure is compared with ESPnet's own Speech2Text on the very
same extracted model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.corpus.datadir import read_table
from espnet_allinone.deploy.build import ensure_exported, export_dir_for, load_model
from espnet_allinone.deploy.runtime import OnnxSpeech2Text
from espnet_allinone.export.extract import Extractor

SUBS = ["d4-w1-fp", "d4-w0.5-int8", "d4-w1-int4", "d2-w0.5-int2"]
BEAM = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("transcribe")
    paths = shared_toy_experiment()
    extractor = Extractor(paths["config"], paths["model"])
    dirs = {}
    for sub in SUBS:
        directory = extractor.extract(sub, root / "extracted", verify=False).directory
        ensure_exported(directory, variants=("exact", "int8"), kernels="nbits",
                        log=lambda _m: None, convs="int8")
        dirs[sub] = directory
    wavs = list(read_table(tiny_corpus / "test" / "wav.scp").values())
    audio = [soundfile.read(w, dtype="float32")[0] for w in wavs]
    return root, dirs, wavs, audio


def _espnet_greedy(s2t, speech: np.ndarray) -> tuple[list[int], np.ndarray]:
    """ESPnet's own CTC best path (CTC.argmax) of the stock model Speech2Text loaded."""
    model = s2t.asr_model
    with torch.no_grad():
        x = torch.from_numpy(speech)[None]
        enc, _ = model.encode(x, torch.tensor([x.shape[1]]))
        best = model.ctc.argmax(enc)[0].tolist()
        logp = model.ctc.log_softmax(enc)[0].numpy()
    ids, prev = [], None
    for i in best:
        if i != prev and i not in (model.blank_id, model.eos):
            ids.append(i)
        prev = i
    return ids, logp


def test_onnx_path_equals_stock_speech2text(exported):
    """Greedy token-for-token against ESPnet's CTC argmax; beam search token-for-token
    against Speech2Text(ctc_weight=1, beam_size=4); text as ESPnet's tokenizer writes it."""
    from espnet2.bin.asr_inference import Speech2Text

    _, dirs, _, audio = exported
    for sub, directory in dirs.items():
        s2t = Speech2Text(asr_train_config=directory / "config.yaml",
                          asr_model_file=directory / "model.pth", ctc_weight=1.0,
                          beam_size=BEAM)
        greedy = OnnxSpeech2Text(export_dir_for(directory))
        beam = OnnxSpeech2Text(export_dir_for(directory), search="beam", beam_size=BEAM)
        n_tokens = 0
        for speech in audio:
            ref_ids, ref_logp = _espnet_greedy(s2t, speech)
            logp = greedy.log_probs([speech])[0]
            assert logp.shape == ref_logp.shape, sub
            assert np.abs(logp - ref_logp).max() < 1e-4, sub
            assert greedy(speech)[0].token_ids == ref_ids, sub
            text, tokens, token_ids, _ = s2t(speech)[0]
            got = beam(speech)[0]
            assert got.token_ids == token_ids, sub
            assert (got.text, got.tokens) == (text, tokens), sub
            n_tokens += len(token_ids)
        assert n_tokens > 0, sub  # not a vacuous comparison of empty outputs


def test_low_bit_weights_run_as_matmulnbits_and_files_are_low_bit_sized(exported):
    import onnx

    _, dirs, _, _ = exported
    sizes = {}
    for sub, directory in dirs.items():
        out = export_dir_for(directory)
        meta = json.loads((out / "deploy.json").read_text())
        ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
        nbits = [n for n in onnx.load(str(out / "model.onnx")).graph.node
                 if n.op_type == "MatMulNBits"]
        if sub.endswith("fp"):
            assert not nbits
        else:
            bits = int(sub.rsplit("int", 1)[1])
            assert nbits and all(
                next(a.i for a in n.attribute if a.name == "bits") == bits for n in nbits)
        int8_ops = [n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node]
        assert "ConvInteger" in int8_ops  # the conv2d front is int8 in the int8 variant
        assert ("MatMulInteger" in int8_ops) or ops.count("MatMul") == 0
        sizes[sub] = meta["variants"]["exact"]["bytes"]
        assert sizes[sub] == (out / "model.onnx").stat().st_size
        # N-bit weights are N bits in the file too (tests/test_packed_onnx.py has the details)
        assert sizes[sub] <= 1.2 * (directory / "model.pth").stat().st_size + 32_000, sub
    # the positional table is computed, not stored: the files track the weights' bits
    assert sizes["d4-w1-int4"] < 0.6 * sizes["d4-w1-fp"]
    assert sizes["d2-w0.5-int2"] < sizes["d4-w1-int4"]


def test_int8_variant_agrees_closely(exported):
    _, dirs, _, audio = exported
    directory = dirs["d4-w1-fp"]
    exact = OnnxSpeech2Text(export_dir_for(directory))
    int8 = OnnxSpeech2Text(export_dir_for(directory), variant="int8")
    a, b = exact.log_probs(audio[:3]), int8.log_probs(audio[:3])
    for x, y in zip(a, b):
        p, q = np.exp(x), np.exp(y)
        assert np.abs(p - q).max() < 0.1  # posteriors, not bit-equal: int8 activations


def test_runs_in_a_fresh_process_with_only_numpy_and_onnxruntime(exported):
    _, dirs, wavs, audio = exported
    out = export_dir_for(dirs["d4-w1-int4"])
    code = (
        "import sys, json, numpy as np\n"
        "from espnet_allinone.deploy.runtime import OnnxSpeech2Text\n"
        "from espnet_allinone.deploy.audio import read_audio\n"
        f"asr = OnnxSpeech2Text({str(out)!r}, search='beam', beam_size={BEAM})\n"
        f"hyp = asr(read_audio({str(wavs[0])!r}, asr.sample_rate))[0]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'espnet', 'espnet2', 'torchaudio'))\n"
        "print(json.dumps({'ids': hyp.token_ids, 'heavy': heavy}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    expected = OnnxSpeech2Text(out, search="beam", beam_size=BEAM)(audio[0])[0].token_ids
    assert got["ids"] == expected


def test_cli_transcribes_reports_bad_files_and_reuses_the_export(exported, tmp_path, capsys):
    from espnet_allinone.bin.transcribe import main

    _, dirs, wavs, audio = exported
    directory = dirs["d2-w0.5-int2"]
    onnx_file = export_dir_for(directory) / "model.onnx"
    before = onnx_file.stat().st_mtime_ns
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    out = tmp_path / "hyp.txt"
    rc = main(["--model", str(directory), "--kernels", "nbits", "--num_threads", "2",
               "--output", str(out), wavs[0], str(empty), str(corrupt), wavs[1]])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"skipped: {empty}: empty file" in err
    assert f"skipped: {corrupt}: not a readable audio file" in err
    assert "RTF " in err and "2 files, 2 thread(s)" in err
    assert "exporting" not in err and onnx_file.stat().st_mtime_ns == before  # reused
    lines = out.read_text().splitlines()
    asr = OnnxSpeech2Text(export_dir_for(directory))
    assert lines == [f"{wavs[0]}\t{asr(audio[0])[0].text}", f"{wavs[1]}\t{asr(audio[1])[0].text}"]
    assert main(["--model", str(directory), "--kernels", "nbits", str(empty)]) == 3
    capsys.readouterr()


def test_cli_sample_rate_and_bad_model(exported, tmp_path, capsys):
    from espnet_allinone.bin.transcribe import main

    root, dirs, _, audio = exported
    wav8k = tmp_path / "8k.wav"
    soundfile.write(wav8k, audio[0][::2], 8000, subtype="PCM_16")
    directory = dirs["d4-w1-fp"]
    assert main(["--model", str(directory), "--kernels", "nbits", "--no_resample",
                 str(wav8k)]) == 3
    assert "sample rate 8000 Hz, the model takes 16000 Hz" in capsys.readouterr().err
    assert main(["--model", str(directory), "--kernels", "nbits", str(wav8k)]) == 0
    captured = capsys.readouterr()
    assert "8000 Hz resampled to the model's 16000 Hz" in captured.err
    assert captured.out.startswith(f"{wav8k}\t")
    assert main(["--model", str(root), str(wav8k)]) == 2
    assert "is not an extracted model directory: missing config.yaml, model.pth" in \
        capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nowhere"), str(wav8k)]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["--model", str(directory)]) == 2
    assert "no audio given" in capsys.readouterr().err
    not_a_zip = tmp_path / "model.zip"
    not_a_zip.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: no meta.yaml
    assert main(["--model", str(not_a_zip), str(wav8k)]) == 2
    assert "not a model-zoo zip with meta.yaml" in capsys.readouterr().err
    assert not not_a_zip.with_suffix(".onnx").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_changed_model_is_exported_again(exported, tmp_path):
    import shutil

    from espnet_allinone.deploy.build import is_current

    _, dirs, _, _ = exported
    copy = tmp_path / "d4-w1-fp"
    shutil.copytree(dirs["d4-w1-fp"], copy)
    shutil.copytree(export_dir_for(dirs["d4-w1-fp"]), export_dir_for(copy))
    assert is_current(copy, ("exact",), "nbits")
    assert not is_current(copy, ("exact",), "auto")  # other export options
    with (copy / "config.yaml").open("a") as f:
        f.write("# edited\n")
    assert not is_current(copy, ("exact",), "nbits")


def test_a_truncated_onnx_is_refused_and_exported_again(exported, tmp_path):
    import shutil

    from espnet_allinone.deploy.build import is_current
    from espnet_allinone.deploy.runtime import DeployError

    _, dirs, _, audio = exported
    copy = tmp_path / "d4-w1-int4"
    shutil.copytree(dirs["d4-w1-int4"], copy)
    out = export_dir_for(copy)
    shutil.copytree(export_dir_for(dirs["d4-w1-int4"]), out)
    onnx_file = out / "model.onnx"
    whole = onnx_file.read_bytes()
    onnx_file.write_bytes(whole[: len(whole) // 2])  # as a copy cut short
    with pytest.raises(DeployError, match=rf"model.onnx is damaged: {len(whole) // 2:,} bytes, "
                       rf"deploy.json records {len(whole):,} \(truncated"):
        OnnxSpeech2Text(out)
    said = []
    assert not is_current(copy, ("exact",), "nbits", log=said.append)
    assert said == [(f"{onnx_file} is damaged: {len(whole) // 2:,} bytes, deploy.json records "
                    f"{len(whole):,} (truncated or partly copied?); export the model again "
                    "(transcribe re-exports it): re-exporting")]
    asr = load_model(copy, kernels="nbits", log=lambda _m: None)
    assert onnx_file.stat().st_size == len(whole)
    ref = OnnxSpeech2Text(export_dir_for(dirs["d4-w1-int4"]))
    assert asr(audio[0])[0].token_ids == ref(audio[0])[0].token_ids


def test_fast_on_a_cpu_without_int8_compute_runs_exact(exported, monkeypatch, capsys):
    from espnet_allinone.bin.transcribe import main
    from espnet_allinone.deploy import build

    _, dirs, wavs, _ = exported
    monkeypatch.setattr(build, "lacks_int8_compute", lambda: "this x86 CPU has no AVX2")
    said = []
    asr = load_model(dirs["d4-w1-int4"], "fast", kernels="nbits", log=said.append)
    assert asr.variant == "exact"
    message = ("--fast: this x86 CPU has no AVX2, so MatMulNBits would compute in float "
               "anyway; running the exact variant")
    assert said == [message]
    assert main(["--model", str(dirs["d4-w1-int4"]), "--fast", "--kernels", "nbits",
                 str(wavs[0])]) == 0
    err = capsys.readouterr().err
    assert message in err and "variant exact, greedy search)" in err


def test_zip_model_and_python_api(exported, tmp_path):
    from espnet_allinone.export.zoo import pack_extracted

    _, dirs, _, audio = exported
    directory = dirs["d4-w1-int4"]
    zipped = pack_extracted(directory, tmp_path / "packed")
    asr = load_model(zipped, kernels="nbits", log=lambda _m: None)
    assert asr.directory == zipped.with_suffix(".onnx")
    ref = OnnxSpeech2Text(export_dir_for(directory))
    assert [asr(a)[0].token_ids for a in audio[:3]] == [ref(a)[0].token_ids for a in audio[:3]]
    # a padded batch: the longest utterance (no padding) decodes as alone
    longest = int(np.argmax([len(a) for a in audio[:3]]))
    batch = asr.transcribe_batch(audio[:3])
    assert batch[longest].token_ids == ref(audio[longest])[0].token_ids
    assert sorted(p.name for p in zipped.parent.iterdir()) == ["d4-w1-int4.onnx", zipped.name]
