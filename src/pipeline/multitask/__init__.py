"""Multitask learning: architectures that share parameters between tasks, and weightings that turn
per-task losses into one update."""
