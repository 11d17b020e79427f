"""detseg.pipeline."""
