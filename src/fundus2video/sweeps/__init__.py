"""Hyperparameter sweeps: the sweep file (`spec`) and the local search over it (`search`); the
`fundus2video sweep` command (commands/sweep.py) runs them here or on a wandb server."""
