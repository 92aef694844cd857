"""Typed records and the run store."""
