"""Targeted distillation: teacher/student roles, the top-k logit stream, TP-aware losses, targeting, training."""
