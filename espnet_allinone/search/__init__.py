"""The whole space, not just the listed points: mixed records and their search.

An all-in-one model holds every record in which each block runs at its own
trained precision and width, far more recognisers than the uniform
subsystems. :mod:`records` names such a *mixed* record torch-free and turns it
into the encoder's architecture record; training draws them
(``model_conf.mixed_share``); :mod:`greedy` searches them for byte budgets on
held-out data (:mod:`evaluate`), :mod:`experiment` loads an experiment and
writes what the search found (``python -m espnet_allinone.bin.search``).
"""
