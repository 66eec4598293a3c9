"""espnet-allinone: one-pass compression of ESPnet speech recognisers."""
