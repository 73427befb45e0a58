"""The terminal's side of the two-way channel (docs/CHANNEL.md): enrollment, check-ins,
commands from the collector, remote config."""
