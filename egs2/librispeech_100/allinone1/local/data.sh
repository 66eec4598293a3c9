#!/usr/bin/env bash
# LibriSpeech-100h data preparation from a local copy (LIBRISPEECH in db.sh):
# data/{train_clean_100, dev (= dev_clean + dev_other), dev_clean, dev_other,
# test_clean, test_other}.
set -euo pipefail
[ $# -eq 0 ] || { echo "$0: takes no options (set LIBRISPEECH in db.sh)" >&2; exit 1; }
. ./db.sh
if [ -z "${LIBRISPEECH}" ]; then
    echo "$0: LIBRISPEECH is not set: put the path of the directory holding LibriSpeech/ in db.sh" >&2
    exit 1
fi
for part in train-clean-100 dev-clean dev-other test-clean test-other; do
    python3 -m espnet_allinone.bin.prepare_corpus librispeech --root "${LIBRISPEECH}" \
        --part "${part}" --outdir "data/${part//-/_}"
done
python3 -m espnet_allinone.bin.datadir combine data/dev data/dev_clean data/dev_other
