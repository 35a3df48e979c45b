"""Building the bundle from a plan: strip subgraphs with edited pads, launchers, keys, the manifest."""
