#!/usr/bin/env bash
# Default all-in-one recipe: needs no download. Synthesises an English corpus
# with espeak-ng, trains one all-in-one Conformer on the CPU, extracts, decodes
# and scores every subsystem, and prints the results table
# (exp/asr_train_allinone/RESULTS.md, wer_vs_size.png).
#   ./run.sh                        # everything
#   ./run.sh --stage 13 --stop_stage 16 --subsystems "d4-w1-fp d3-w0.5-int2"
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh

./allinone.sh \
    --lang en \
    --ngpu 0 \
    --train_threads 2 \
    --nj 2 \
    --inference_nj 2 \
    --fs 16k \
    --token_type char \
    --train_config conf/train_allinone.yaml \
    --inference_config conf/decode_ctc.yaml \
    --train_set train \
    --valid_set dev \
    --test_sets "test test_unseen" \
    --subsystems all \
    --local_data_opts "--num_train 2000 --num_dev 100 --num_test 400 --num_test_unseen 200 --seed 0 --nj 2" \
    "$@"
