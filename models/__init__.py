"""UAAFusion models: the unfolded fusion network, the segmenters and the attribution functions."""
