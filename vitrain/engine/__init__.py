"""Engines: the training loop, evaluation, optimizers and schedules."""
