# Corpus location (as ESPnet's db.sh): the directory holding LibriSpeech/
# (train-clean-100, dev-clean, dev-other, test-clean, test-other), from
# https://www.openslr.org/12. Set it here or in the environment.
LIBRISPEECH="${LIBRISPEECH:-}"
