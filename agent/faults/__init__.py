"""From readings to fault events: the catalog, the engine, the capture policy and the flight recorder.

Imports core only.
"""
