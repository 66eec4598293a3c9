#!/usr/bin/env bash
# Switchboard-300h data preparation from local copies (SWBD, EVAL2000 in db.sh):
# data/train_nodev (all but the first ${dev_utts} utterances), data/train_dev,
# data/eval2000. Audio goes through sph2pipe when installed (the LDC files are
# shorten-compressed SPHERE); the format stage cuts the segments at 8 kHz.
set -euo pipefail
dev_utts=4000
while [ $# -gt 0 ]; do
    case "$1" in
        --dev_utts) dev_utts="$2"; shift 2 ;;
        *) echo "$0: unknown option $1 (valid: --dev_utts)" >&2; exit 1 ;;
    esac
done
. ./db.sh
if [ -z "${SWBD}" ]; then
    echo "$0: SWBD is not set: put the path of Switchboard-1 (LDC97S62) in db.sh" >&2
    exit 1
fi
if [ -z "${EVAL2000}" ]; then
    echo "$0: EVAL2000 is not set: put the path of eval2000 (LDC2002S09 + LDC2002T43) in db.sh" >&2
    exit 1
fi
command -v sph2pipe > /dev/null || echo "$0: warning: sph2pipe not found; reading SPHERE with sox (uncompressed files only)" >&2
python3 -m espnet_allinone.bin.prepare_corpus swbd --root "${SWBD}" --outdir data/train_all
python3 -m espnet_allinone.bin.datadir subset data/train_all data/train_dev --first "${dev_utts}"
python3 -m espnet_allinone.bin.datadir subset data/train_all data/train_nodev --skip_first "${dev_utts}"
python3 -m espnet_allinone.bin.prepare_corpus eval2000 --root "${EVAL2000}" --outdir data/eval2000
