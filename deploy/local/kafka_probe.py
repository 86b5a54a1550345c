"""
Asks a Kafka-protocol broker whether it answers: ApiVersions, then Metadata.

Standard library only, so the stack script can probe the broker before any
virtualenv exists. Exit status 0 when the broker answered both requests and
advertises the address it was asked on; 1 otherwise, with the reason on stderr.

Usage: python3 kafka_probe.py HOST:PORT [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
CLIENT_ID = b"churnwatch-stack-probe"


class ProbeError(Exception):
    """The broker did not answer as a Kafka broker should."""


def _request(
    sock: socket.socket, api_key: int, api_version: int, correlation_id: int, body: bytes
) -> bytes:
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _read_exactly(sock, 4))[0]
    response = _read_exactly(sock, size)
    got_id = struct.unpack(">i", response[:4])[0]
    if got_id != correlation_id:
        msg = f"expected correlation id {correlation_id}, got {got_id}"
        raise ProbeError(msg)
    return response[4:]


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            msg = f"connection closed after {len(chunks)} of {n} bytes"
            raise ProbeError(msg)
        chunks.extend(chunk)
    return bytes(chunks)


def probe(host: str, port: int, timeout: float) -> list[tuple[int, str, int]]:
    """
    Returns the brokers the cluster advertises, after ApiVersions and Metadata v0.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        body = _request(sock, API_VERSIONS, 0, 1, b"")
        error_code, count = struct.unpack(">hi", body[:6])
        if error_code != 0:
            msg = f"ApiVersions: expected error code 0, got {error_code}"
            raise ProbeError(msg)
        # Each entry: api_key, min_version, max_version (int16 each).
        entries = [struct.unpack_from(">hhh", body, 6 + 6 * i) for i in range(count)]
        versions = {key: (low, high) for key, low, high in entries}
        if versions.get(API_METADATA, (1, 0))[0] > 0:
            got = versions.get(API_METADATA)
            msg = f"expected the broker to support Metadata v0, got Metadata versions {got}"
            raise ProbeError(msg)
        # Metadata v0 with an empty topic list: brokers plus all topics.
        body = _request(sock, API_METADATA, 0, 2, struct.pack(">i", 0))
        (n_brokers,) = struct.unpack(">i", body[:4])
        pos = 4
        brokers = []
        for _ in range(n_brokers):
            node_id, host_len = struct.unpack(">ih", body[pos : pos + 6])
            pos += 6
            broker_host = body[pos : pos + host_len].decode()
            pos += host_len
            (broker_port,) = struct.unpack(">i", body[pos : pos + 4])
            pos += 4
            brokers.append((node_id, broker_host, broker_port))
        return brokers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("address", help="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    host, _, port_text = args.address.rpartition(":")
    port = int(port_text)
    try:
        brokers = probe(host, port, args.timeout)
    except (OSError, ProbeError, struct.error) as exc:
        print(f"kafka probe {args.address}: {exc}", file=sys.stderr)
        return 1
    if not any(b_port == port for _, _, b_port in brokers):
        print(
            f"kafka probe {args.address}: expected a broker advertising port {port}, got {brokers}",
            file=sys.stderr,
        )
        return 1
    print(f"kafka {args.address}: brokers {brokers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
