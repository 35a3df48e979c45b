"""CURVE keys: every device authenticates and encrypts its traffic with a key pair of its own.

`halpc compile` gives each device a new key pair: the secret key only in the device's own
folder (`keys/NAME.key_secret`, mode 0600, in ZeroMQ's certificate format), every public key in
the manifest's `curve`. A device's PULL socket is a CURVE server that admits only the bundle's
other devices, by public key, and names each connection by its device (the ZAP User-Id), so a
message whose header claims another sender is rejected (`check_sender`). Its PUSH sockets are
CURVE clients that know their server's public key, so no one can pose as a device. A bundle
compiled with `--insecure` says `"insecure": true` instead of `curve` and runs in plaintext.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from halpc_stub import wire
from halpc_stub.errors import BundleError

INSECURE_WARNING = ("warning: this bundle was compiled with --insecure: traffic between the devices "
                    "is unauthenticated and unencrypted")
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_KEY_LINE = re.compile(rb'^[ \t]*(public-key|secret-key)[ \t]*=[ \t]*"([^"\n]*)"', re.M)


def secret_file(device: str) -> str:
    """Where a device's secret key is, in its folder."""
    return f"keys/{device}.key_secret"


def secret_text(device: str, public: bytes, secret: bytes) -> bytes:
    """A secret key file (the format of pyzmq's `zmq.auth.load_certificate`)."""
    return (f"#   CURVE key pair of {device!r}, written by `halpc compile`: keep it on {device} only\n"
            f'curve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n').encode()


def insecure(manifest: Any) -> bool:
    return manifest.data.get("insecure") is True


@dataclass(frozen=True)
class DeviceKeys:
    name: str
    public: bytes
    secret: bytes
    publics: dict[str, bytes]  # every device's public key, by device

    def serve(self, context: zmq.Context, sock: zmq.Socket) -> ThreadAuthenticator:
        """Make `sock` (not yet bound) a CURVE server admitting the other devices; stop the
        returned authenticator before the context ends."""
        auth = _Authenticator(context, {key: name for name, key in self.publics.items() if name != self.name})
        auth.start()  # before the first handshake: without a ZAP handler CURVE admits any key
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_server = True
        return auth

    def client(self, sock: zmq.Socket, server: str) -> None:
        """Make `sock` (not yet connected) a CURVE client of device `server`."""
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_serverkey = self.publics[server]


class _Authenticator(ThreadAuthenticator):
    """ZAP handler: admits the given public keys, the connection's User-Id is their device."""

    def __init__(self, context: zmq.Context, clients: dict[bytes, str]) -> None:
        super().__init__(context)
        self.clients = clients
        self.configure_curve_callback("*", self)

    def callback(self, domain: str, key: bytes) -> bool:  # key: z85
        return key in self.clients

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.clients[z85.encode(client_public_key)]


def load(manifest: Any, device: str, path: str | Path | None = None) -> DeviceKeys | None:
    """The device's key pair (from `path`, by default its folder's key file) and every device's
    public key; None for an --insecure bundle."""
    if insecure(manifest):
        return None
    if not zmq.has("curve"):
        raise BundleError(f"libzmq {zmq.zmq_version()} here has no CURVE security; `pip install pyzmq` "
                          "(its wheels have it), or recompile the bundle with --insecure")
    publics = manifest.data.get("curve")
    names = {d.name for d in manifest.devices}
    if not isinstance(publics, dict) or set(publics) != names or not all(map(_is_key, publics.values())):
        raise BundleError(f"{manifest.root / 'manifest.json'}: 'curve' does not give every device a CURVE "
                          "public key; recompile the bundle")
    path = Path(path) if path else manifest.path(device, secret_file(device))
    public, secret = _read(path)
    if public != publics[device]:
        raise BundleError(f"{path}: not the key manifest.json names for {device} (a key of another compile?); "
                          f"copy the whole {device}/ folder of one bundle again")
    return DeviceKeys(device, public.encode(), secret, {n: k.encode() for n, k in publics.items()})


def _is_key(key: Any) -> bool:
    try:
        return isinstance(key, str) and len(key) == 40 and len(z85.decode(key)) == 32
    except (KeyError, ValueError):
        return False


def _read(path: Path) -> tuple[str, bytes]:
    """(public key, secret key) of a key file that only its owner can read."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing: the device's secret key comes in its folder of the bundle; "
                          "copy the whole folder again (or recompile)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the secret key ({exc.strerror or exc}); make it a file "
                          "the user running halpc owns (chmod 600)") from None
    if mode & 0o077:
        raise BundleError(f"{path}: the secret key is open to group or others (mode {mode & 0o777:o}); "
                          f"run `chmod 600 {path}`")
    found = dict(_KEY_LINE.findall(text))
    public, secret = found.get(b"public-key"), found.get(b"secret-key")
    try:
        valid = public is not None and secret is not None and zmq.curve_public(secret) == public
    except (ValueError, zmq.ZMQError):
        valid = False
    if not valid:
        raise BundleError(f"{path}: not a CURVE key pair as `halpc compile` writes it; copy the device's "
                          "folder again (or recompile)")
    return public.decode(), secret  # type: ignore[union-attr]


def check_sender(header: dict[str, Any], frame: zmq.Frame) -> None:
    """Reject a message whose header names another sender than its connection authenticated."""
    user = frame.get("User-Id")
    if header["from"] != user:
        raise wire.Rejected(f"message from {header['from']!r} on a connection authenticated as {user!r}")


def watch(sock: zmq.Socket) -> zmq.Socket:
    """A monitor of `sock`'s failed handshakes, for `handshake_failure`."""
    return sock.get_monitor_socket(HANDSHAKE_FAILED)


def handshake_failure(monitor: zmq.Socket | None) -> str | None:
    """How the watched socket's handshakes failed since the last call, or None."""
    why = None
    while monitor is not None:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
        except zmq.Again:
            break
        why = "refused this host's key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "failed the handshake"
    return why
