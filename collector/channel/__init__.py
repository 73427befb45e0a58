"""The collector's side of the two-way channel (issue 16; the protocol is docs/CHANNEL.md).

The terminal speaks first: it enrolls once with an enrollment token, then checks in; the
collector answers each check-in with signed commands and remote config. Modules:

| module | what |
|---|---|
| `errors` | `ChannelError`: a refusal with its HTTP code, status word and one line |
| `hooks` | the merge points: `_audit`, `on_silent`, `on_back` |
| `signing` | the collector's Ed25519 command key; canonical JSON; signed envelopes |
| `devices` | the registry of enrolled devices (table ``devices``), device tokens, their keys |
| `enroll` | enrollment tokens (``enroll_tokens``) and ``POST /v1/enroll`` |
| `commands` | kinds and their args (§3), queueing, delivery, results (``device_commands``) |
| `remote_config` | the safe keys (§4), fleet-wide and per-site values (``remote_config``) |
| `checkin` | ``POST /v1/checkins``: state stored, results acknowledged, commands delivered |
| `writer` | the check-ins' group commit: the check-ins queued, in one transaction |
| `waiters` | the long-poll: wake a waiting check-in when a command is queued (any instance) |
| `silent` | silent devices (§5): the sweep on a clock, outages (``device_outages``) |
| `api` | the HTTP handlers; `views` the device pages |

Every table is on the index's engine through portable SQL (`collector.storage.sql`), so
several instances share it; every function that reads the clock takes ``now``.
"""
