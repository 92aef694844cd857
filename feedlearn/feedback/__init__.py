"""Feedback sources: preference labelers with a query budget and a label cache."""
