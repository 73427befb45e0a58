"""posagent test suite."""
