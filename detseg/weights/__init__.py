"""detseg.weights."""
