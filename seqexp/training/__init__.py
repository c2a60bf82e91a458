"""Training: freeze strategies, optimizers and learning-rate schedules, how a run stops, fault injection."""
