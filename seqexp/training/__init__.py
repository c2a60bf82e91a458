"""Training: freeze strategies, optimizers and learning-rate schedules."""
