"""Re-ranking of a global search: patch matching, query expansion, DBA, k-reciprocal, position priors."""
