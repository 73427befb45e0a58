"""The running daemon: wiring of every stage, supervision, sd_notify and the run marker.

Imports every agent stage; only agent.commands imports it.
"""
