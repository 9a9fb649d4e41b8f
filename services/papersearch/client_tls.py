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
    """Connect with TLS: the server's CA (None: the system's roots), and a client certificate
    and key for a gateway that requires mutual TLS."""

    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None

    def __post_init__(self) -> None:
        """Paths as given (str too); a certificate without its key, or a key without its
        certificate, is refused here: gRPC's C core aborted the whole process on it."""
        for name in ("ca_file", "cert_file", "key_file"):
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, Path(value))
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("Tls: cert_file and key_file go together (a client certificate "
                             "and its key, for mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        import grpc

        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file), private_key=read(self.key_file),
            certificate_chain=read(self.cert_file))


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca", type=Path, metavar="PEM",
                        help="the gateway's CA certificate (implies --tls; default: system roots)")
    parser.add_argument("--cert", type=Path, metavar="PEM",
                        help="client certificate, for a gateway that requires mutual TLS")
    parser.add_argument("--key", type=Path, metavar="PEM", help="the client certificate's key")


def tls_from_args(args: argparse.Namespace) -> Tls | None:
    if (args.cert is None) != (args.key is None):
        raise ValueError("--cert and --key go together")
    if not (args.tls or args.ca or args.cert):
        return None
    for path in (args.ca, args.cert, args.key):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    return Tls(args.ca, args.cert, args.key)
