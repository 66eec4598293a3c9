"""The LibriSpeech-100h recipe's own run.sh, end to end, for both model families.

A tiny corpus in the LibriSpeech layout (two speakers x two utterances a part,
LibriSpeech-like texts, speech-like audio whose length follows the text) goes
through ``egs2/librispeech_100/allinone1/run.sh`` as a user runs it, on CPU:

* the shipped Conformer config with only sizes, epochs, batch sizes and the
  quantizer group size shrunk (SpecAugment, run.sh's 0.9/1.0/1.1 speed
  perturbation, bpe tokens, the 24-subsystem depth x width x precision space,
  sandwich training and the joint CTC/attention decoding config as shipped):
  every stage once, 1-18, with the baselines stage (15) training one subsystem
  alone and the upload (18) as a dry run;
* the shipped wav2vec2 config stamped by ``run.sh --pretrained`` with a tiny
  Hugging Face-layout checkpoint: stages 10-18 on the data the Conformer run
  prepared (one epoch, test_clean only, to save time).

Asserted is what a user relies on: exit 0; every listed subsystem extracted,
decoded and scored on each test set, one hypothesis an utterance, with a
RESULTS.md / results.json row whose WER (and CER) is the count sclite wrote;
the zips packed and the upload folder written; the low-bit Conformer subsystem
loaded by ESPnet's stock ``Speech2Text`` giving stage 13's hypothesis; and
nothing written outside the copied recipe dir.

It runs in the default suite: about 20 ESPnet processes (each imports ESPnet,
~9 s of CPU) make it about 4 minutes of CPU, the price of guarding the recipe a
LibriSpeech user ports.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from test_recipe import REPO, copy_recipe, run
from test_recipe_data import fake_librispeech

from espnet_allinone.corpus.datadir import read_table

LIBRI = REPO / "egs2" / "librispeech_100" / "allinone1"
TEST_SETS = ("test_clean", "test_other", "dev_clean", "dev_other")  # run.sh's --test_sets
DEPTHS = {6: 1, 9: 2, 12: 3}  # the shipped configs' depths of 12 blocks -> 3 tiny blocks
CONFORMER_SUBS = ("d3-w1-fp", "d1-w0.5-int2")
W2V_SUBS = ("d3-w1-fp", "d1-w0.5-int4")
W2V_TEST_SETS = ("test_clean",)
SMALL_RUN = ("--ngpu", "0", "--nj", "1", "--inference_nj", "1", "--nbpe", "24",
             "--rtf_utts", "1", "--skip_upload", "false")
"""Options a user on one CPU changes (run.sh's --ngpu 4, --nj 32, --nbpe 5000 need LibriSpeech)."""


WORDS = ("THE", "AND", "OF", "TO", "HE", "WAS", "THAT", "HIS", "IN", "SHE", "HAD", "IT",
         "WITH", "HER", "YOU", "FOR", "NOT", "BUT", "AS", "AT", "ON", "SAID", "ALL", "BY",
         "WHICH", "ONE", "THEY", "WERE", "SO", "FROM", "THIS", "HIM", "HAVE", "BE",
         "THERE", "WHEN", "WHAT", "OLD")


def speechlike_librispeech(root: Path) -> dict[str, str]:
    """``fake_librispeech``'s layout with LibriSpeech-like texts (eight common words an
    utterance) and speech-like audio: one 60 ms harmonic tone a character, pitch by
    speaker, so audio length follows the text and CTC has frames for every token."""
    fake_librispeech(root)
    texts = {}
    t = np.arange(int(0.06 * 16000)) / 16000
    env = np.sin(np.pi * t / t[-1]) ** 2
    for trans in sorted((root / "LibriSpeech").rglob("*.trans.txt")):
        lines = []
        for utt in sorted(line.split()[0] for line in trans.read_text().splitlines()):
            rng = np.random.default_rng(zlib.crc32(utt.encode()))
            texts[utt] = " ".join(rng.choice(WORDS, size=8))
            lines.append(f"{utt} {texts[utt]}")
            f0 = 1.0 + 0.1 * (int(utt.split("-")[0]) % 2)
            chunks = []
            for c in texts[utt]:
                hz = f0 * (120 + 11 * (ord(c) % 40))
                tone = sum(np.sin(2 * np.pi * k * hz * t) / k for k in (1, 2, 3))
                chunks.append(0.2 * env * tone + 0.005 * rng.standard_normal(len(t)))
            soundfile.write(trans.parent / f"{utt}.flac", np.concatenate(chunks).astype(np.float32),
                            16000, format="FLAC")
        trans.write_text("\n".join(lines) + "\n")
    return texts


def _tiny_name(name: str) -> str:
    """``d6-w0.5-int2`` -> ``d1-w0.5-int2`` (also inside ``acc_d6-...`` keys)."""
    return re.sub(r"d(\d+)-w", lambda m: f"d{DEPTHS[int(m[1])]}-w", name)


def _shrink_common(conf: dict) -> None:
    """Sizes shared by both families: 3 blocks (depths 1, 2, 3), group size 8, a few
    updates over two epochs, warm-ups of a few steps."""
    enc = conf["encoder_conf"]
    assert enc["depths"] == sorted(DEPTHS) and enc["widths"] == [0.5, 1.0]
    assert enc["precisions"] == ["int2", "int4", "int8", "fp"]
    enc["depths"] = sorted(DEPTHS.values())
    enc["quant_conf"]["group_size"] = 8
    mc = conf["model_conf"]
    mc["valid_subsystems"] = [_tiny_name(s) for s in mc["valid_subsystems"]]
    mc.update(distill_start_steps=2, float_warmup_steps=2)
    conf["best_model_criterion"] = [[a, _tiny_name(b), c] for a, b, c in
                                    conf["best_model_criterion"]]
    conf["scheduler_conf"]["warmup_steps"] = 4
    conf.update(batch_bins=120000, accum_grad=1, max_epoch=2)


def tiny_conformer(recipe: Path) -> str:
    conf = yaml.safe_load((recipe / "conf" / "train_allinone.yaml").read_text())
    conf["encoder_conf"].update(output_size=32, linear_units=64, num_blocks=3)
    conf["decoder_conf"].update(linear_units=64, num_blocks=1)
    _shrink_common(conf)
    (recipe / "conf" / "train_tiny_conformer.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    return "conf/train_tiny_conformer.yaml"


def tiny_wav2vec2(recipe: Path, ckpt_root: Path) -> tuple[str, Path]:
    """The shipped wav2vec2 config shrunk, and a tiny Hugging Face checkpoint with the
    shipped conv front's strides (16 channels), 3 layers of d=32, 4 heads."""
    from helpers.foundation_checkpoints import (
        reference_model,
        write_huggingface,
    )

    base = REPO / "conf" / "foundation" / "train_allinone_wav2vec2_librispeech100.yaml"
    conf = yaml.safe_load(base.read_text())
    front = [[16, k, s] for _, k, s in conf["encoder_conf"]["extractor_conv_layer_config"]]
    ref, kw, mask = reference_model(extractor_conv_layer_config=front, encoder_num_layers=3,
                                    encoder_embed_dim=32, encoder_num_heads=4,
                                    encoder_ff_interm_features=64)
    ckpt = write_huggingface(ref, kw, mask, ckpt_root / "wav2vec2-tiny")
    conf["encoder_conf"]["mask_channel_length"] = 8  # of 32 channels (64 of 768 shipped)
    _shrink_common(conf)
    conf["max_epoch"] = 1
    (recipe / "conf" / "train_tiny_wav2vec2.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    return "conf/train_tiny_wav2vec2.yaml", ckpt


def _snapshot(top: Path) -> dict[str, object]:
    """What a run must not change: the corpus and checkpoint under ``top``, the names in
    ``top`` and in the repository's recipe dir (its run outputs are not opened), the
    recipe's own conf/ and local/, and the repository's configs."""
    def files(root: Path) -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size)
                for p in sorted(root.rglob("*")) if p.is_file()}

    snap: dict[str, object] = {"top": sorted(p.name for p in top.iterdir()),
                               "recipe": sorted(p.name for p in LIBRI.iterdir())}
    for root in (top / "corpus", top / "ckpt", LIBRI / "conf", LIBRI / "local", REPO / "conf"):
        snap[str(root)] = files(root) if root.exists() else None
    return snap


def _stages_done(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"Stage (\d+): \w+: done in", out)]


@pytest.fixture(scope="module")
def conformer_run(tmp_path_factory: pytest.TempPathFactory):
    """run.sh with the tiny Conformer, every stage once: 1-14 for both listed
    subsystems, 15 (baselines) for the smallest alone, 16-18 for both again (the
    report picks the baseline up); (recipe, the three runs' output, corpus texts)."""
    top = tmp_path_factory.mktemp("libri")
    texts = speechlike_librispeech(top / "corpus")
    recipe = copy_recipe(LIBRI, top / "allinone1")
    config = tiny_conformer(recipe)
    before = _snapshot(top)
    out = ""
    for stages, subs in ((("--stop_stage", "14"), CONFORMER_SUBS),
                         (("--stage", "15", "--stop_stage", "15", "--skip_baselines", "false"),
                          CONFORMER_SUBS[1:]),
                         (("--stage", "16"), CONFORMER_SUBS)):
        res = run(recipe, "--train_config", config, *stages, "--subsystems", " ".join(subs),
                  *SMALL_RUN, env={"LIBRISPEECH": str(top / "corpus")}, timeout=1500)
        assert res.returncode == 0, res.stdout[-8000:]
        out += res.stdout
    assert _snapshot(top) == before  # nothing written beside the copied recipe
    return recipe, out, texts


@pytest.fixture(scope="module")
def wav2vec2_run(conformer_run):
    """run.sh --pretrained (a tiny Hugging Face folder) stages 10-18 on the data the
    Conformer run prepared, one epoch, decoding test_clean only; (recipe, output)."""
    recipe = conformer_run[0]
    top = recipe.parent
    config, ckpt = tiny_wav2vec2(recipe, top / "ckpt")
    before = _snapshot(top)
    res = run(recipe, "--pretrained", str(ckpt), "--train_config", config, "--stage", "10",
              "--subsystems", " ".join(W2V_SUBS), "--test_sets", W2V_TEST_SETS[0], *SMALL_RUN,
              env={"LIBRISPEECH": str(top / "corpus")}, timeout=1500)
    assert res.returncode == 0, res.stdout[-8000:]
    assert _snapshot(top) == before
    return recipe, res.stdout


def _sclite_sum(result_txt: Path) -> tuple[int, int]:
    """(words, errors) from the ``| Sum |`` raw-count row sclite wrote."""
    for line in result_txt.read_text().splitlines():
        if re.match(r"\s*\|\s*Sum\s*\|", line):
            nums = line.replace("|", " ").split()[1:]
            return int(nums[1]), int(nums[-2])
    raise AssertionError(f"no Sum row in {result_txt}")


def check_results(recipe: Path, exp: Path, subs: tuple[str, ...],
                  test_sets: tuple[str, ...]) -> dict:
    """Every subsystem extracted, decoded on every test set with one hypothesis per
    utterance, scored by sclite, reported with sclite's WER, and packed."""
    rows = {r["subsystem"]: r for r in json.loads((exp / "results.json").read_text())["rows"]}
    assert sorted(rows) == sorted(subs)
    md = (exp / "RESULTS.md").read_text()
    for sub, row in rows.items():
        assert f"| {sub}" in md
        assert (exp / "extracted" / sub / "model.pth").is_file()
        assert row["bytes"] == (exp / "extracted" / sub / "model.pth").stat().st_size
        for dset in test_sets:
            ref = read_table(recipe / "dump" / "raw" / dset / "text")
            hyp = read_table(exp / "decode" / sub / dset / "text")
            assert sorted(hyp) == sorted(ref) and len(ref) == 4, (sub, dset)
            words, errors = _sclite_sum(exp / "decode" / sub / dset / "score_wer" / "result.txt")
            assert words == sum(len(t.split()) for t in ref.values())
            wer = row["wer"] if dset == test_sets[0] else row["other_wer"][dset]
            assert wer == pytest.approx(100.0 * errors / words, abs=1e-3), (sub, dset)
        chars, errors = _sclite_sum(exp / "decode" / sub / test_sets[0] / "score_cer" / "result.txt")
        assert row["cer"] == pytest.approx(100.0 * errors / chars, abs=1e-3), sub
        assert (exp / "packed" / f"{sub}.zip").stat().st_size > 1000
        assert (exp / "upload" / sub).is_dir()  # stage 18's dry run wrote the folder
    assert set(rows[subs[0]]["other_wer"]) == set(test_sets[1:])
    return rows


def test_conformer_every_stage(conformer_run) -> None:
    recipe, out, texts = conformer_run
    assert _stages_done(out) == [1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    # speed perturbation as run.sh sets it; bpe tokens (sentencepiece) as the recipe uses
    train = read_table(recipe / "dump" / "raw" / "train_clean_100_sp" / "text")
    assert len(train) == 3 * 4 and set(train.values()) <= set(texts.values())
    assert (recipe / "data" / "en_token_list" / "bpe_unigram24" / "bpe.model").is_file()
    exp = recipe / "exp" / "asr_train_tiny_conformer_sp"
    used = yaml.safe_load((exp / "config.yaml").read_text())
    assert used["specaug"] == "specaug" and used["token_type"] == "bpe"
    assert "loss_d1-w0.5-int2=" in (exp / "train.log").read_text()  # sandwich paths trained
    rows = check_results(recipe, exp, CONFORMER_SUBS, TEST_SETS)
    # the subsystem trained alone in stage 15 is in the report beside its all-in-one twin
    alone = json.loads((exp / "baselines.json").read_text())
    assert sorted(alone) == ["d1-w0.5-int2"]
    assert rows["d1-w0.5-int2"]["baseline_wer"] == alone["d1-w0.5-int2"]["wer"]
    assert rows["d3-w1-fp"]["baseline_wer"] is None
    assert "trained one by one" in (exp / "RESULTS.md").read_text()


def test_conformer_extracted_subsystem_loads_in_stock_speech2text(conformer_run) -> None:
    """The low-bit subsystem, loaded by ESPnet's own Speech2Text with the recipe's
    decoding config, gives stage 13's hypothesis."""
    from espnet2.bin.asr_inference import Speech2Text

    recipe, _, _ = conformer_run
    exp = recipe / "exp" / "asr_train_tiny_conformer_sp"
    model = exp / "extracted" / "d1-w0.5-int2"
    decode = yaml.safe_load((recipe / "conf" / "decode.yaml").read_text())
    decode.pop("batch_size")
    s2t = Speech2Text(asr_train_config=model / "config.yaml",
                      asr_model_file=model / "model.pth", device="cpu", **decode)
    assert type(s2t.asr_model.encoder).__name__ == "PackedConformerEncoder"
    utt, path = min(read_table(recipe / "dump" / "raw" / "test_clean" / "wav.scp").items())
    speech, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000
    text = s2t(speech)[0][0]
    want = read_table(exp / "decode" / "d1-w0.5-int2" / "test_clean" / "text").get(utt, "")
    assert text == want


def test_wav2vec2_every_stage(wav2vec2_run) -> None:
    recipe, out = wav2vec2_run
    assert _stages_done(out) == [10, 11, 12, 13, 14, 16, 17, 18]
    exp = recipe / "exp" / "asr_train_tiny_wav2vec2_sp"
    # run.sh wrote the checkpoint's architecture into the config training used
    used = yaml.safe_load((exp / "config.yaml").read_text())
    assert used["encoder"] == "elastic_wav2vec2" and used["normalize"] is None
    assert used["encoder_conf"]["pretrained_path"] == str(recipe.parent / "ckpt" / "wav2vec2-tiny")
    assert used["encoder_conf"]["encoder_num_layers"] == 3
    check_results(recipe, exp, W2V_SUBS, W2V_TEST_SETS)
    enc = {sub: yaml.safe_load((exp / "extracted" / sub / "config.yaml").read_text())["encoder"]
           for sub in W2V_SUBS}
    assert enc == {"d3-w1-fp": "torchaudiohubert", "d1-w0.5-int4": "packed_wav2vec2"}
