"""Peers for the cost comparison: a re-encoding attention NP and an exact GP with incremental Cholesky."""
