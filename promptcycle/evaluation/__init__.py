"""Evaluating a prompt: the model x spectrum cell, the run plan, and the summary."""
