"""The gateway's TLS, on its gRPC and HTTP ports: the certificate and key from PEM files; mutual
TLS when a client CA is set. Plaintext stays the default for the loopback address `make run`
binds."""

from __future__ import annotations

import ssl

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


def http_ssl_context(serve: ServeSettings) -> ssl.SSLContext | None:
    """The same certificate, key and client CA for the HTTP/JSON port; None for plaintext."""
    if serve.tls_cert_file is None or serve.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(serve.tls_cert_file, serve.tls_key_file)
    if serve.tls_client_ca_file is not None:
        context.load_verify_locations(serve.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
