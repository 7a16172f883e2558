"""Measurement: the benchmark, the profile, the instruction-set hold."""
