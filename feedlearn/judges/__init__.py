"""Judges: a model asked to compare or grade responses (pairwise preference, Likert 1-5), on the shared
retry asker; replies are parsed as data, never evaluated."""
