"""Entry scripts for training experiments: the bundled-model recipe and the scoring of runs.

They sit on top like ``cli.py`` (they drive training runs and score them through the engine), so they
may import every layer; nothing imports them.
"""
