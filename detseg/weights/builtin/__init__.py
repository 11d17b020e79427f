"""detseg.weights.builtin."""
