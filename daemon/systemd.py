"""systemd readiness and watchdog notifications (sd_notify), without a C dependency.

With `Type=notify` systemd waits for `READY=1` before it considers the service started, and with
`WatchdogSec=` it restarts a daemon that stops sending `WATCHDOG=1`. Outside systemd
(`NOTIFY_SOCKET` unset) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. `READY=1`) to systemd; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd gave us (seconds), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
