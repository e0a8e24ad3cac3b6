"""Gymnasium environments registered under `WorldBagel/...`."""
