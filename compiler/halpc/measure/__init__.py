"""Measuring real machines: a device's speed profile, and the emulated network lab for tests and
benchmarks."""
