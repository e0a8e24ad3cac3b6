"""Hydra config tree of the `worldbagel` CLI (one yaml per command, groups in sub-folders)."""
