"""Task data: loaders of problem sets and generators of the synthetic tasks the offline recipes learn
(arithmetic word problems, an instruction corpus with verbal feedbacks, hidden-rule preference pairs, a
small repository to explore)."""
