"""The host's side of a compiled bundle: verify it in one process, run it over the network,
choose a plan per task."""
