"""Encoders registered into ESPnet (imported lazily by ``espnet_allinone.registry``)."""
