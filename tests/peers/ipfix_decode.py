#!/usr/bin/env python3
"""Decode IPFIX with the PyPI `ipfix` package (python-ipfix) and print JSON.

An independent decoder for Lumen's peer tests (tests/tests/ipfix_peers.rs).
Enterprise elements come from IESpec files (`--iespec`, one spec per line,
e.g. dashboards/collectors/python-ipfix/lumen.iespec) through
`ipfix.ie.for_spec`; IANA and RFC 5103 reverse elements from the package.

Input is one of:
  --udp HOST:PORT   listen for datagrams (port 0 picks a free one)
  --tcp HOST:PORT   accept connections and read the message stream
  --file PATH       a file of concatenated IPFIX messages (RFC 5655)

When listening, the first line on stderr is `listening PROTO HOST:PORT`. The
script stops after `--records N` data records of `--template` (or at EOF for a
file) and prints one JSON object per message on stdout:

  {"sequence": 3, "odid": 1, "export_time": 1700000000,
   "templates": [256, 257],
   "records": [{"template_id": 256, "fields": {"sourcePodName": "web-1", ...}}]}

Timestamps are milliseconds since the epoch, addresses strings, octet arrays
hex. An element the information model does not know keeps python-ipfix's
placeholder name `_ipfix_<pen>_<id>`, so a missing definition is visible.
Exits 3 if the wanted records do not arrive within `--timeout` seconds.
"""

import argparse
import ipaddress
import json
import socket
import sys
import time
from datetime import datetime

import ipfix.ie
import ipfix.message
import ipfix.template

EPOCH = datetime(1970, 1, 1)
HEADER_LEN = 16


def load_model(specfiles):
    ipfix.ie.use_iana_default()
    ipfix.ie.use_5103_default()
    for path in specfiles:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    ipfix.ie.for_spec(line)


def plain(value):
    """A JSON-friendly form of a decoded value."""
    if isinstance(value, datetime):
        delta = value - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def decode_with_tid(tmpl, buf, offset, recinf=None):
    rec, offset = ipfix.template.Template.decode_namedict_from(tmpl, buf, offset, recinf=recinf)
    return (tmpl.tid, rec), offset


class Decoder:
    def __init__(self, template_id, wanted):
        # One buffer per transport session: templates are scoped to it.
        self.sessions = {}
        self.template_id = template_id
        self.wanted = wanted
        self.seen = 0

    def done(self):
        return self.wanted is not None and self.seen >= self.wanted

    def message(self, session, read):
        """Decode one message with `read(msgbuf)` and print it."""
        msg = self.sessions.setdefault(session, ipfix.message.MessageBuffer())
        templates = []
        msg.template_record_hook = lambda _msg, tmpl: templates.append(tmpl.tid)
        read(msg)
        records = []
        for tid, rec in msg.record_iterator(decode_fn=decode_with_tid):
            records.append({"template_id": tid, "fields": {k: plain(v) for k, v in rec.items()}})
            if tid == self.template_id:
                self.seen += 1
        out = {
            "sequence": msg.sequence,
            "odid": msg.odid,
            "export_time": msg.export_epoch,
            "templates": templates,
            "records": records,
        }
        print(json.dumps(out, sort_keys=True), flush=True)


def split_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def listen_udp(addr, decoder, deadline):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(split_addr(addr))
    host, port = sock.getsockname()
    print(f"listening udp {host}:{port}", file=sys.stderr, flush=True)
    while not decoder.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            return False
        decoder.message(peer, lambda msg, data=data: msg.from_bytes(data))
    return True


def listen_tcp(addr, decoder, deadline):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(split_addr(addr))
    server.listen(4)
    host, port = server.getsockname()
    print(f"listening tcp {host}:{port}", file=sys.stderr, flush=True)
    while not decoder.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        server.settimeout(remaining)
        try:
            conn, peer = server.accept()
        except socket.timeout:
            return False
        with conn:
            stream = conn.makefile("rb")
            while not decoder.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                conn.settimeout(remaining)
                try:
                    decoder.message(peer, lambda msg: msg.read_message(stream))
                except EOFError:
                    break
                except socket.timeout:
                    return False
    return True


def read_file(path, decoder):
    with open(path, "rb") as stream:
        while True:
            try:
                decoder.message(path, lambda msg: msg.read_message(stream))
            except EOFError:
                return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--udp", metavar="HOST:PORT")
    source.add_argument("--tcp", metavar="HOST:PORT")
    source.add_argument("--file", metavar="PATH")
    parser.add_argument("--iespec", action="append", default=[], metavar="FILE")
    parser.add_argument("--template", type=int, default=256)
    parser.add_argument("--records", type=int)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    load_model(args.iespec)
    decoder = Decoder(args.template, args.records)
    deadline = time.monotonic() + args.timeout
    if args.udp:
        ok = listen_udp(args.udp, decoder, deadline)
    elif args.tcp:
        ok = listen_tcp(args.tcp, decoder, deadline)
    else:
        ok = read_file(args.file, decoder)
    if not ok:
        print(
            f"timeout: {decoder.seen} of {decoder.wanted} records of template {args.template}",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
