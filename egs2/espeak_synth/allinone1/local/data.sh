#!/usr/bin/env bash
# Data preparation: synthesise the English corpus with espeak-ng + sox into
# data/{train,dev,test,test_unseen} (Kaldi style; deterministic for a seed).
set -euo pipefail
num_train=2000
num_dev=100
num_test=100
num_test_unseen=0
festival_share=0
seed=0
nj=4
while [ $# -gt 0 ]; do
    case "$1" in
        --num_train|--num_dev|--num_test|--num_test_unseen|--festival_share|--seed|--nj) printf -v "${1#--}" '%s' "$2"; shift 2 ;;
        *) echo "$0: unknown option $1 (valid: --num_train --num_dev --num_test --num_test_unseen --festival_share --seed --nj)" >&2
           exit 1 ;;
    esac
done
. ./db.sh
python3 -m espnet_allinone.bin.make_corpus --outdir data --wavdir "${ESPEAK_SYNTH}" \
    --num_train "${num_train}" --num_dev "${num_dev}" --num_test "${num_test}" \
    --num_test_unseen "${num_test_unseen}" --festival_share "${festival_share}" \
    --seed "${seed}" --nj "${nj}"
