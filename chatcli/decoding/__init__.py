"""Decoding: strategies, sampling filters and logit processors."""
