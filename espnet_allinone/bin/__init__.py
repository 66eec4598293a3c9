"""Entry points: python -m espnet_allinone.bin.<name>."""
