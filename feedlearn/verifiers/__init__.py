"""Verifiers: whether an output is right, by rule, never by running it (math answers, verbal feedback
metrics)."""
