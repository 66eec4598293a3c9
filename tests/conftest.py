"""Shared fixtures: a tiny synthesised corpus every test can train or decode on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from espnet_allinone.corpus import CorpusConfig, ToolMissingError, make_corpus

# tests/helpers is imported as ``helpers``: pytest's default import mode puts this
# directory on sys.path already, its other modes do not.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

TINY = CorpusConfig(num_train=36, num_dev=10, num_test=10, seed=0)


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pytest.ini; kept here so a run with another ini knows it.
    config.addinivalue_line("markers", "slow: takes more than ~60 s; run with -m slow")


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waits on a shared, busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with ``train`` (36 utts), ``dev`` and ``test`` (10 each) Kaldi dirs.

    Each holds wav.scp (absolute paths to 16 kHz mono wavs), text, utt2spk,
    spk2utt and utt2dur. Made once per test session (about a second).
    """
    root = tmp_path_factory.mktemp("tiny_corpus")
    try:
        make_corpus(root / "data", TINY, nj=2, log=lambda *_: None)
    except ToolMissingError as e:  # the message carries the install command
        pytest.fail(str(e))
    return root / "data"
