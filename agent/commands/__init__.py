"""The `posagent` command line: one module per command (`run(args) -> int`), output helpers.

The top layer: may import any package, collector and simulator included; nothing imports it.
"""
