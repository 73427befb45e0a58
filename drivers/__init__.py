"""Hardware I/O for posagent: readers and pure parsers, no policy (never imports agent)."""
