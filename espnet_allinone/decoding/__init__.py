"""Decoding helpers that plug into ESPnet's beam search (scorers, their selection)."""
