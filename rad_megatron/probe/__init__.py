"""The redundancy probe: self-speculative acceptance of skip sets, per-layer scores, Bayesian search, reports."""
