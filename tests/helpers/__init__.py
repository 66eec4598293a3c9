"""Helpers for tests and benchmarks, not installed with the package: a freshly
initialised all-in-one experiment (``toy_experiment``), tiny wav2vec2 / HuBERT
checkpoints (``foundation_checkpoints``) and running ESPnet's trainer on tiny
data in-process (``espnet_run``), realistic random CTC output and the beam
search over it (``ctc_search``). Imported as ``helpers``: ``tests/conftest.py``
puts ``tests/`` on ``sys.path``, benchmarks do it themselves."""
