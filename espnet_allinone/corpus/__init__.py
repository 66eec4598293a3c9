"""Synthetic English corpus made with espeak-ng and sox (no download needed)."""

from espnet_allinone.corpus.make import CorpusConfig, make_corpus, plan_jobs
from espnet_allinone.corpus.tools import ToolMissingError, require_tools

__all__ = ["CorpusConfig", "ToolMissingError", "make_corpus", "plan_jobs", "require_tools"]
