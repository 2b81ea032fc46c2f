"""Stress runs: faults (chaos), minutes of load (soak), many actors against one replay (scale)."""
