"""Structured L0 pruning (Jiang et al. 2023; DPHuBERT's recipe): hard-concrete gates on
heads, FFN units, conv channels and whole modules, a Lagrangian that drives the
expected size to a target, layer-wise distillation, and the learned architecture
as a record that extraction cuts out physically."""
