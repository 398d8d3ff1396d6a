"""Evaluation of instance segmentation and classification (paper Section IV); numpy/scipy only."""
