"""The gateway's TLS, on its gRPC and HTTP ports: the certificate and key from PEM files; mutual
TLS when a client CA is set. Plaintext stays the default for the loopback address `make run`
binds."""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor

import grpc

from papersearch.settings import ServeSettings


def server_credentials(serve: ServeSettings) -> grpc.ServerCredentials | None:
    """None for plaintext; else the cert/key pair, requiring client certificates signed by
    ``tls_client_ca_file`` when it is set."""
    if serve.tls_cert_file is None or serve.tls_key_file is None:
        return None
    client_ca = serve.tls_client_ca_file.read_bytes() if serve.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(serve.tls_key_file.read_bytes(), serve.tls_cert_file.read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None,
    )


class TlsRefused(ValueError):
    """The gateway's TLS files cannot serve; the message names the setting and the file."""


def check_tls(serve: ServeSettings) -> None:
    """TlsRefused where the TLS files cannot serve the ports the gateway opens, before
    anything binds: gRPC took any bytes and failed at its bind, reported as another process
    on the port; the HTTP port raised a bare SSLError naming no file; an empty client CA file
    started a gateway that turned every client away. Read as the HTTP port reads them, at
    OpenSSL's default security level where that port is on (a 1024-bit key, a SHA-1
    signature refused) and at none where gRPC serves alone (which takes them); then given to
    gRPC on a port of the system's choosing, never started: a key type gRPC's TLS does not
    take (RSA-PSS, Ed448, secp256k1) passed OpenSSL's reading."""
    if _context(serve, strict=serve.http_port is not None) is None:
        return
    probe = grpc.server(ThreadPoolExecutor(max_workers=1))
    try:
        bound = probe.add_secure_port("127.0.0.1:0", server_credentials(serve))
    except RuntimeError:
        bound = 0
    finally:
        probe.stop(None)
    if not bound:
        raise TlsRefused(
            f"serve.tls_cert_file {serve.tls_cert_file} with serve.tls_key_file "
            f"{serve.tls_key_file}: gRPC's TLS cannot use them (a key type it does not take, "
            "such as RSA-PSS, Ed448 or secp256k1? its log line above says)")


def http_ssl_context(serve: ServeSettings) -> ssl.SSLContext | None:
    """The same certificate, key and client CA for the HTTP/JSON port; None for plaintext.
    TlsRefused, naming the setting and file, where they cannot be used."""
    return _context(serve, strict=True)


def _context(serve: ServeSettings, strict: bool) -> ssl.SSLContext | None:
    cert, key, client_ca = serve.tls_cert_file, serve.tls_key_file, serve.tls_client_ca_file
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if not strict:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:  # an encrypted key is asked no password (OpenSSL would prompt on a terminal)
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as error:
        raise TlsRefused(
            f"serve.tls_cert_file {cert} with serve.tls_key_file {key}: {_reason(error)} (PEM "
            "files: the certificate, its chain after it, and its own key, unencrypted)"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(client_ca)
        except (ssl.SSLError, OSError) as error:
            raise TlsRefused(f"serve.tls_client_ca_file {client_ca}: {_reason(error)} (PEM "
                             "certificates of the CAs that sign client certificates)") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(error: ssl.SSLError | OSError) -> str:
    """OpenSSL's reason (KEY_VALUES_MISMATCH, EE_KEY_TOO_SMALL, ...) or the OS's words."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason
    return error.strerror or str(error)
