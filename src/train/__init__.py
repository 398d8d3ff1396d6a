"""Training: the tensorpack trainer and the run folder."""
