"""What-if tools over the cost model: bandwidth traces replayed through the host's policies, and
several sources sharing helpers, simulated frame by frame."""
