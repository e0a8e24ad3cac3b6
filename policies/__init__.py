"""Policies that RL code imports: `from worldbagel.policies import ...`."""
