"""Transfer and multitask learning experiments."""
