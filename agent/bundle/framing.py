"""The sealing worker's framing (agent.bundle.finish.SealWorker ↔ agent.bundle.sealed.serve).

A request is REQUEST (magic `PAS1`, the bundle's rank, the length) then the
plaintext zip; a reply is REPLY (magic `PAR1`, 1 for the finished bytes or 0
for a one-line reason, the length) then those bytes. Big-endian, fixed size.
"""

from __future__ import annotations

import struct

REQUEST = struct.Struct(">4siQ")
REPLY = struct.Struct(">4sBQ")
REQUEST_MAGIC = b"PAS1"
REPLY_MAGIC = b"PAR1"
