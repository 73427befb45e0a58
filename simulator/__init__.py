"""Simulated POS terminal: stands in for every device the agent watches."""
