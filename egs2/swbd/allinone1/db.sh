# Corpus locations (as ESPnet's db.sh). SWBD: Switchboard-1 (LDC97S62) with the
# ISIP ms98 transcripts (swb_ms98_transcriptions/) inside; EVAL2000: the
# Hub5'00 evaluation set (LDC2002S09 audio + LDC2002T43 .stm reference).
SWBD="${SWBD:-}"
EVAL2000="${EVAL2000:-}"
