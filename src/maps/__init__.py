"""The numpy cores between label maps and network maps: targets, post-processing."""
