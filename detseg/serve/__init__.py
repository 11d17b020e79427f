"""detseg.serve."""
