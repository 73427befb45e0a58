"""Process exit codes (sysexits.h), the one table every command and the daemon use."""

from __future__ import annotations

EX_OK = 0
EX_FAIL = 1  # the command ran and found a problem (selftest: a fault; verify: not intact)
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78
