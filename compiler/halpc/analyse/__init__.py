"""The model as halpc sees it: the spatial trunk, each layer's row windows, the rows of a strip."""
