"""Training recipes that chain the project's own commands (collect, train-vae, finetune) into one model.

`gridworld`: the recipe of the gridworld world model shipped in worldbagel/assets/gridworld
(scripts/train_gridworld.py runs it from the command line).
"""
