# Corpus locations (as ESPnet's db.sh). The synthetic corpus needs none: it is
# made by local/data.sh with espeak-ng and sox; its wavs go here.
ESPEAK_SYNTH="${ESPEAK_SYNTH:-downloads/espeak_synth}"
