"""Pretraining pieces: the loss (spec §3.2–3.3)."""
