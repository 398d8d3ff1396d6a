"""Tile and whole-slide inference: windows, stitching, blocks, slides, the predictor."""
