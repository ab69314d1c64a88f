"""Training experiments: the bundled-model recipe (``train.sh``) and the scoring of runs (``cli.py score-runs``,
``cli.py score-whole``).

They sit on top like ``cli.py`` (they drive training runs and score them through the engine), so they
may import every layer; only ``cli.py`` imports them.
"""
