#!/usr/bin/env bash
# All-in-one Conformer on LibriSpeech-100h (paper scale: 12 blocks, d=256, FFN 2048;
# space depth {6,9,12} x width {0.5,1} x precision {int2,int4,int8,fp}).
# Speed perturbation 0.9/1.0/1.1 as in ESPnet's asr1 recipe (stage 2 writes
# data/train_clean_100_sp; the experiment is exp/asr_<config>_sp).
# Set LIBRISPEECH in db.sh. Multi-GPU: --ngpu 4 (ESPnet's launcher, DDP);
# multi-node: --num_nodes N with a slurm.pl cuda_cmd in cmd.sh.
#
# Foundation models (wav2vec2 / HuBERT, CTC fine-tuning of a user's checkpoint):
#   ./run.sh --pretrained /path/to/checkpoint \
#       --train_config ../../../conf/foundation/train_allinone_wav2vec2_librispeech100.yaml
# The checkpoint is a Hugging Face folder, a fairseq .pt or a torchaudio state dict; its
# architecture is written into exp/configs/<config>.yaml (which training then uses) and
# the waveform goes to the encoder as it is (--feats_normalize none).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

pretrained=""
train_config=conf/train_allinone.yaml
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pretrained) [ $# -ge 2 ] || { echo "$0: --pretrained needs a path" >&2; exit 2; }
                      pretrained="$2"; shift 2 ;;
        --train_config) [ $# -ge 2 ] || { echo "$0: --train_config needs a path" >&2; exit 2; }
                        train_config="$2"; shift 2 ;;
        *) pass+=("$1"); shift ;;
    esac
done
if [ -n "${pretrained}" ]; then
    [ -e "${pretrained}" ] || {
        echo "$0: --pretrained ${pretrained} does not exist (give a Hugging Face model folder," \
             "a fairseq .pt or a torchaudio state dict)" >&2
        exit 2
    }
    [ "${train_config}" != conf/train_allinone.yaml ] \
        || train_config=../../../conf/foundation/train_allinone_wav2vec2_librispeech100.yaml
    stamped="exp/configs/$(basename "${train_config}")"
    python -m espnet_allinone.foundation.conf --pretrained "${pretrained}" \
        --config "${train_config}" --output "${stamped}" || exit 2
    train_config="${stamped}"
    pass=(--feats_normalize none "${pass[@]}")
fi

./allinone.sh \
    --lang en \
    --ngpu 4 \
    --nj 32 \
    --inference_nj 32 \
    --fs 16k \
    --token_type bpe \
    --nbpe 5000 \
    --bpemode unigram \
    --max_wav_duration 30 \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --train_config "${train_config}" \
    --inference_config conf/decode.yaml \
    --train_set train_clean_100 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --subsystems all \
    "${pass[@]}"
