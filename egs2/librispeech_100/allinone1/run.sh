#!/usr/bin/env bash
# All-in-one Conformer on LibriSpeech-100h (paper scale: 12 blocks, d=256, FFN 2048;
# space depth {6,9,12} x width {0.5,1} x precision {int2,int4,int8,fp}).
# Set LIBRISPEECH in db.sh. Multi-GPU: --ngpu 4 (ESPnet's launcher, DDP);
# multi-node: --num_nodes N with a slurm.pl cuda_cmd in cmd.sh.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

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
    --train_config conf/train_allinone.yaml \
    --inference_config conf/decode.yaml \
    --train_set train_clean_100 \
    --valid_set dev \
    --test_sets "test_clean test_other dev_clean dev_other" \
    --subsystems all \
    "$@"
