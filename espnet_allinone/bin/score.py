"""Score one decoding with sclite: WER and CER, asr.sh-style score_{wer,cer}/ dirs.

    python -m espnet_allinone.bin.score --ref_dir dump/raw/test \
        --hyp_text exp/.../decode/d6-w0.5-int4/test/text --outdir exp/.../decode/d6-w0.5-int4/test
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from espnet_allinone.errors import cli_errors
from espnet_allinone.report.results import SCORES_FILE
from espnet_allinone.report.scoring import score_dir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ref_dir", type=Path, required=True, help="data dir with text, utt2spk")
    p.add_argument("--hyp_text", type=Path, required=True, help="Kaldi text of hypotheses")
    p.add_argument("--outdir", type=Path, required=True)
    args = p.parse_args(argv)
    for f in (args.ref_dir / "text", args.ref_dir / "utt2spk", args.hyp_text):
        if not f.is_file():
            print(f"score: error: missing {f}", file=sys.stderr)
            return 2
    with cli_errors("score") as outcome:
        scores = score_dir(args.ref_dir, args.hyp_text, args.outdir)
    if outcome.status:
        return outcome.status
    out = {k: v.to_dict() for k, v in scores.items()}
    (args.outdir / SCORES_FILE).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{args.hyp_text}: WER {scores['wer'].error_rate:.2f}% "
          f"({scores['wer'].errors}/{scores['wer'].words}), CER {scores['cer'].error_rate:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
