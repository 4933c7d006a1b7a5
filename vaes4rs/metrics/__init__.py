"""Metric definitions (one function each) and the suite a protocol assembles from them."""
