"""Training and inference machinery behind train.py and test.py: config, checkpoints, loops, fusion of files."""
