"""detseg.eval."""
