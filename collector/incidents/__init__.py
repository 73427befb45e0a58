"""Incidents (issue 15 items 3, 4 and 8): the bundles of a terminal grouped by fault key
into episodes that people follow up until resolved.

| module | what |
|---|---|
| `model` | the rows, statuses and their transitions, contact channels, errors |
| `grouping` | signals (bundles, fleet-side faults) into incidents; the catch-up pass |
| `events` | the append-only event log: every change is one `events.append` |
| `queries` | lists, one incident, the fleet's faults, the home page's figures |
| `service` | `Incidents`: the above in transactions, people's changes, the periodic pass |
| `api` | the JSON API and the form posts (`/v1/incidents...`, `/v1/fleet/faults`) |
| `inputs`, `as_json` | what the API reads (checked, bounded) and what it answers |
| `views`, `render` | the pages: home, incident list, incident, device |
| `export` | one incident as a zip for a dispute |

Tables (migration 0006, both engines): ``incidents``, ``incident_bundles``,
``incident_events``, ``incident_cursor``.
"""
