"""TLS for the clients (Python client, CLI, load test): options and their command-line flags.
Imports grpc only when credentials are made, so the CLI's parser stays light."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


@dataclass(frozen=True, slots=True)
class Tls:
    """Connect with TLS: the server's CA (None: the system's roots), a client certificate and
    key for a gateway that requires mutual TLS, and the name the gateway's certificate must
    hold when it is not the target's host (``server_name``: a target given by address, or a
    port-forward)."""

    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        """Paths as given (str too); a file that is not there is refused by its field (a bare
        FileNotFoundError, no name, left three paths to suspect), and a certificate without
        its key, or a key without its certificate: gRPC's C core aborted the process on it."""
        for name in ("ca_file", "cert_file", "key_file"):
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, Path(value))
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("Tls: cert_file and key_file go together (a client certificate "
                             "and its key, for mutual TLS)")
        for name in ("ca_file", "cert_file", "key_file"):
            if (path := getattr(self, name)) is not None and not path.is_file():
                raise FileNotFoundError(f"Tls {name}: no such file: {path}")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel's credentials; a file that holds no PEM certificate (or no key that
        matches the certificate) is refused here, by name: gRPC only failed the first call,
        UNAVAILABLE "Failed to create security handshaker" (DEADLINE_EXCEEDED when it waited
        for ready), and named the cause in its own log."""
        import grpc

        self._check_pem()

        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file), private_key=read(self.key_file),
            certificate_chain=read(self.cert_file))

    def channel_options(self) -> list[tuple[str, str | int]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def _check_pem(self) -> None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # no security level: gRPC's BoringSSL has none, and takes the 1024-bit RSA keys and
        # SHA-1 signatures OpenSSL's default level refuses; only what it cannot read is refused
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        if self.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except ssl.SSLError as error:
                raise ValueError(f"{self.ca_file}: not a PEM CA certificate "
                                 f"({error.reason or error})") from None
        if self.cert_file is not None and self.key_file is not None:
            try:  # a key that asks for a password gets none (gRPC reads no encrypted key)
                context.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
            except ssl.SSLError as error:
                raise ValueError(f"{self.cert_file}, {self.key_file}: not a PEM certificate "
                                 "and its private key (unencrypted, matching the "
                                 f"certificate) ({error.reason or error})") from None


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca", type=Path, metavar="PEM",
                        help="the gateway's CA certificate (implies --tls; default: system roots)")
    parser.add_argument("--cert", type=Path, metavar="PEM",
                        help="client certificate, for a gateway that requires mutual TLS")
    parser.add_argument("--key", type=Path, metavar="PEM", help="the client certificate's key")
    parser.add_argument("--server-name", metavar="NAME",
                        help="the name the gateway's certificate holds, when the target is "
                             "another (an address, a port-forward); implies --tls")


def tls_asked(args: argparse.Namespace) -> bool:
    """Whether the flags ask for TLS: --tls, or one that only TLS uses."""
    return bool(args.tls or args.ca is not None or args.cert is not None or args.server_name)


def tls_from_args(args: argparse.Namespace) -> Tls | None:
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together")
    if not tls_asked(args):
        return None
    for path in (args.ca, args.cert, args.key):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    return Tls(args.ca, args.cert, args.key, args.server_name)
