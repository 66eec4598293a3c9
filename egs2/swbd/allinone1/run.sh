#!/usr/bin/env bash
# All-in-one Conformer on Switchboard-300h (paper scale: 12 blocks, d=256, FFN 2048,
# 8 kHz; space depth {6,9,12} x width {0.5,1} x precision {int2,int4,int8,fp}).
# Speed perturbation 0.9/1.0/1.1 as in ESPnet's asr1 recipe (stage 2 writes
# data/train_nodev_sp; the experiment is exp/asr_train_allinone_sp).
# Set SWBD and EVAL2000 in db.sh. Multi-GPU: --ngpu 4; multi-node: --num_nodes N
# with a slurm.pl cuda_cmd in cmd.sh.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

./allinone.sh \
    --lang en \
    --ngpu 4 \
    --nj 32 \
    --inference_nj 32 \
    --fs 8k \
    --token_type bpe \
    --nbpe 2000 \
    --bpemode unigram \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --train_config conf/train_allinone.yaml \
    --inference_config conf/decode.yaml \
    --train_set train_nodev \
    --valid_set train_dev \
    --test_sets eval2000 \
    --subsystems all \
    "$@"
