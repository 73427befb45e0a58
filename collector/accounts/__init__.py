"""People and tenants on the collector's read side (issue 15 item 1).

| module | what |
|---|---|
| `users` | users (admin / support / merchant), tenants, sites; the `Principal` of a user |
| `passwords` | Argon2id hashes, the 12-character minimum, one-time passwords |
| `sessions` | server-side sessions (rows): expiry, idle timeout, logout on every instance |
| `tokens` | personal API tokens (``Bearer pat_...``), stored hashed, revocable |
| `throttle` | failed logins counted per account and per address in the database |
| `devices` | placing a device: tokens_file + its site's tenant + the audit entry |
| `web` | the HTTP side: who is asking, login/logout, password, admin, audit pages |
| `pages` | the HTML of the admin, audit, password and log-out pages |

Everything lives in the index's database (`collector.storage.sql`, migration 0005), so
several instances share users, sessions, throttling and the audit log. The read side is
closed: there is no access without an account (`posagent collector user add`).
"""
