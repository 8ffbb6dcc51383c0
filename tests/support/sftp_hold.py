#!/usr/bin/env python3
"""An SFTP subsystem for the tests: OpenSSH's sftp-server behind a relay
that holds one request for good, so a test can kill the client at that
exact step. Arguments: MODE NEEDLE MARKER.

  rename-to NEEDLE          holds an SSH_FXP_RENAME whose new path ends
                            with NEEDLE (before the server sees it)
  write-after-open NEEDLE   holds the first SSH_FXP_WRITE after an
                            SSH_FXP_OPEN of a path containing NEEDLE

The first session to hold creates MARKER; later sessions (MARKER there)
relay everything."""

import os
import struct
import subprocess
import sys
import threading

OPEN, WRITE, RENAME = 3, 6, 18

mode, needle, marker = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
server = subprocess.Popen(
    ["/usr/lib/openssh/sftp-server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
)


def replies():
    while True:
        data = os.read(server.stdout.fileno(), 65536)
        if not data:
            os._exit(0)
        os.write(1, data)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            server.stdin.close()
            server.wait()
            sys.exit(0)
        buf += chunk
    return buf


def string_at(body, at):
    n = struct.unpack(">I", body[at : at + 4])[0]
    return body[at + 4 : at + 4 + n], at + 4 + n


def holds(body, opened):
    kind = body[0]
    if mode == "rename-to" and kind == RENAME:
        _, after = string_at(body, 5)
        new_path, _ = string_at(body, after)
        return new_path.endswith(needle), opened
    if mode == "write-after-open":
        if kind == OPEN and needle in string_at(body, 5)[0]:
            return False, True
        return kind == WRITE and opened, opened
    return False, opened


threading.Thread(target=replies, daemon=True).start()
opened = False
while True:
    head = read_exact(4)
    body = read_exact(struct.unpack(">I", head)[0])
    hold, opened = holds(body, opened)
    if hold and not os.path.exists(marker):
        open(marker, "w").close()
        threading.Event().wait()
    server.stdin.write(head + body)
    server.stdin.flush()
