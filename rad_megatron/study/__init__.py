"""The convergence study: RAD's layer choice against baseline choices under identical distillation budgets."""
