"""Verification: the same-function checks against the float64 reference."""
