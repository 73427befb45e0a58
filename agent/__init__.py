"""posagent: monitoring agent for point-of-sale terminals."""

__version__ = "0.1.0"
