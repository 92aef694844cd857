"""Feedback signals a method learns from: preference labelers with a query budget and their label cache,
AdaRefiner's comprehension score and its sub-goals."""
