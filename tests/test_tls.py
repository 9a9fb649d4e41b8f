"""TLS and mutual TLS on the real gateway, with certificates the test makes (cryptography)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from papersearch.cli import main
from papersearch.client import SearchClient
from papersearch.client_tls import Tls
from papersearch.encoder.runtime import Encoder
from papersearch.pipeline.query import SearchQuery
from papersearch.serving import healthcheck
from papersearch.settings import ServeSettings, Settings
from tests.gateway_helpers import Servers, scratch_gateways
from tests.ports import free_port

pytestmark = pytest.mark.slow


def _issue(path: Path, name: str, issuer: tuple | None, *, server: bool = False,
           ca: bool = False) -> tuple:
    """Write <name>.pem and <name>.key; signed by ``issuer`` (its cert, key) or self-signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    ca = _issue(root, "ca", None, ca=True)
    _issue(root, "server", ca, server=True)
    _issue(root, "client", ca)
    _issue(root, "other-ca", None, ca=True)
    return root


@pytest.fixture(scope="module")
def running(sample_settings: Settings, embedder_dir: Path, pki: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("tls-index")
    tls = {"tls_cert_file": pki / "server.pem", "tls_key_file": pki / "server.key"}
    health_port, http_port, mtls_http_port = free_port(), free_port(), free_port()
    encoder = Encoder(embedder_dir)
    with scratch_gateways(sample_settings, encoder, data_dir) as (servers, backend, _):
        yield servers, {
            "tls": servers.start(backend, **tls, http_port=http_port),
            "mtls": servers.start(backend, **tls, tls_client_ca_file=pki / "ca.pem",
                                  http_port=mtls_http_port),
            "probed": servers.start(backend, **tls, health_port=health_port),
            "health": f"127.0.0.1:{health_port}",
            "https": f"https://127.0.0.1:{http_port}",
            "mtls-https": f"https://127.0.0.1:{mtls_http_port}"}


@pytest.fixture(scope="module")
def targets(running: tuple[Servers, dict[str, str]]) -> dict[str, str]:
    return running[1]


def _search(target: str, tls: Tls | None) -> grpc.StatusCode:
    with SearchClient(target, timeout_s=20.0, tls=tls) as client:
        try:
            client.search(SearchQuery("transport security", rerank=False))
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_tls_with_the_right_ca(targets: dict[str, str], pki: Path) -> None:
    assert _search(targets["tls"], Tls(pki / "ca.pem")) == grpc.StatusCode.OK


def test_plaintext_or_an_unknown_ca_cannot_talk_to_a_tls_gateway(
    targets: dict[str, str], pki: Path
) -> None:
    assert _search(targets["tls"], None) == grpc.StatusCode.UNAVAILABLE
    assert _search(targets["tls"], Tls(pki / "other-ca.pem")) == grpc.StatusCode.UNAVAILABLE


def test_the_name_the_certificate_must_hold_can_be_set(targets: dict[str, str],
                                                        pki: Path) -> None:
    """A gateway reached by an address its certificate does not name (a port-forward, an IP)
    could not be verified: no setting took the name. The certificate names 127.0.0.1 and
    localhost; another name asked for fails the check, so the override reaches the channel."""
    assert _search(targets["tls"], Tls(pki / "ca.pem", server_name="localhost")) == (
        grpc.StatusCode.OK)
    assert _search(targets["tls"], Tls(pki / "ca.pem", server_name="gateway.example")) == (
        grpc.StatusCode.UNAVAILABLE)


def test_a_file_holding_no_pem_certificate_or_key_is_refused_by_name(
    pki: Path, tmp_path: Path
) -> None:
    """A CA file that was no PEM, a damaged key or one of another certificate failed only at
    the first call: UNAVAILABLE "Failed to create security handshaker" (DEADLINE_EXCEEDED
    after the whole deadline with wait_for_ready), the cause in gRPC's own log alone."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [(Tls(garbage), "not a PEM CA certificate"),
             (Tls(pki / "ca.pem", pki / "client.pem", garbage), "not a PEM certificate"),
             (Tls(pki / "ca.pem", pki / "client.pem", pki / "server.key"), "matching")]
    for tls, said in cases:
        with pytest.raises(ValueError, match=said):
            SearchClient("127.0.0.1:1", tls=tls, wait_for_ready=True)
    # what gRPC takes though OpenSSL's default security level refuses it: a 1024-bit RSA key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "legacy.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "legacy.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    SearchClient("127.0.0.1:1", tls=Tls(tmp_path / "legacy.pem", tmp_path / "legacy.pem",
                                        tmp_path / "legacy.key")).close()


def test_mutual_tls_needs_a_client_certificate(targets: dict[str, str], pki: Path) -> None:
    assert _search(targets["mtls"], Tls(pki / "ca.pem")) == grpc.StatusCode.UNAVAILABLE
    signed = Tls(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    assert _search(targets["mtls"], signed) == grpc.StatusCode.OK


def _https_search(url: str, context: ssl.SSLContext | None) -> int:
    request = urllib.request.Request(
        url + "/papersearch.v1.SearchService/Search", b'{"query": "transport security"}',
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20, context=context) as response:
        return response.status  # type: ignore[no-any-return]


def test_the_http_port_serves_the_same_tls(targets: dict[str, str], pki: Path) -> None:
    trusting = ssl.create_default_context(cafile=pki / "ca.pem")
    assert _https_search(targets["https"], trusting) == 200
    with pytest.raises(urllib.error.URLError):  # a CA it does not know
        _https_search(targets["https"], ssl.create_default_context(cafile=pki / "other-ca.pem"))
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        _https_search(targets["https"].replace("https:", "http:"), None)  # plaintext
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _https_search(targets["mtls-https"], trusting)  # mutual TLS: no client certificate
    trusting.load_cert_chain(pki / "client.pem", pki / "client.key")
    assert _https_search(targets["mtls-https"], trusting) == 200


def test_cli_search_over_tls(targets: dict[str, str], pki: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "transport security", "--no-rerank", "--json",
                 "--target", targets["tls"], "--ca", str(pki / "ca.pem")]) == 0
    assert '"reranked": false' in capsys.readouterr().out
    assert main(["search", "transport security", "--no-rerank", "--json", "--target",
                 targets["tls"], "--ca", str(pki / "ca.pem"), "--server-name", "localhost"]) == 0
    assert '"reranked": false' in capsys.readouterr().out
    assert main(["search", "q", "--server-name", "localhost"]) == 2
    assert "--server-name only with --target" in capsys.readouterr().err
    assert main(["search", "q", "--target", targets["tls"], "--cert", str(pki / "client.pem")]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status  # type: ignore[no-any-return]


def test_plaintext_health_port_for_probes(running: tuple[Servers, dict[str, str]],
                                          pki: Path) -> None:
    servers, targets = running
    serving = health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + 30
    while _health(targets["health"]) != serving and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(targets["health"]) == serving
    # Only health there: the papersearch services are not on that port.
    assert _search(targets["health"], None) == grpc.StatusCode.UNIMPLEMENTED
    # The main port stays TLS only.
    assert _search(targets["probed"], None) == grpc.StatusCode.UNAVAILABLE
    assert _search(targets["probed"], Tls(pki / "ca.pem")) == grpc.StatusCode.OK
    # One HealthServicer behind both ports: a status set once shows on the health port.
    gateway = next(g for g in servers.gateways if g.address == targets["probed"])
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    # the image's HEALTHCHECK asks that port (it asked plaintext 50051 whatever the settings)
    tls = {"tls_cert_file": pki / "server.pem", "tls_key_file": pki / "server.key"}
    health_port = int(targets["health"].rsplit(":", 1)[1])
    probe = healthcheck.health_target(ServeSettings(**tls, health_port=health_port))
    assert probe == targets["health"] and healthcheck.check(probe) is None
    env = {**os.environ, "PAPERSEARCH_SERVE__HEALTH_PORT": str(health_port)}
    done = subprocess.run([sys.executable, "-m", "papersearch.serving.healthcheck"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match="serves TLS and serve.health_port is not set"):
        healthcheck.health_target(ServeSettings(**tls))
    servers.loop.run(gateway.health.set("", not_serving))
    try:
        assert _health(targets["health"]) == not_serving
        assert healthcheck.check(probe) == f"{probe}: NOT_SERVING"
    finally:
        servers.loop.run(gateway.health.set("", serving))
    assert healthcheck.check(f"127.0.0.1:{free_port()}", timeout_s=2).startswith(
        "127.0.0.1:")  # nothing there: UNAVAILABLE, said in one line


def test_tls_settings_go_together(pki: Path) -> None:
    with pytest.raises(ValidationError, match="go together"):
        ServeSettings(tls_cert_file=pki / "server.pem")
    with pytest.raises(ValidationError, match="needs serve.tls_cert_file"):
        ServeSettings(tls_client_ca_file=pki / "ca.pem")


def test_gateway_tls_files_that_cannot_serve_are_refused_by_setting_and_file(
        pki: Path, tmp_path: Path) -> None:
    """A key not the certificate's, a file that is no PEM, an encrypted key: gRPC took the
    bytes and failed at its bind, reported as "another process listening there"; an empty
    client CA file started a gateway that turned every client away. Refused before binding,
    naming the setting and the file (check_tls runs in `papersearch serve` before Ray and in
    the gateway replica)."""
    from cryptography.hazmat.primitives import serialization

    from papersearch.gateway.tls import TlsRefused, check_tls

    good = {"tls_cert_file": pki / "server.pem", "tls_key_file": pki / "server.key"}
    check_tls(ServeSettings(**good, tls_client_ca_file=pki / "ca.pem"))  # fine
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    key = serialization.load_pem_private_key((pki / "server.key").read_bytes(), None)
    (tmp_path / "locked.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    for settings, said in (
        ({**good, "tls_key_file": pki / "client.key"},
         r"serve.tls_cert_file .*server.pem with serve.tls_key_file .*client.key: "
         r"KEY_VALUES_MISMATCH"),
        ({**good, "tls_cert_file": tmp_path / "garbage.pem"}, r"garbage.pem with .*: \w+"),
        ({**good, "tls_key_file": tmp_path / "locked.key"}, r"locked.key: .*unencrypted\)"),
        ({**good, "tls_key_file": tmp_path / "gone.key"}, "gone.key: No such file"),
        ({**good, "tls_client_ca_file": tmp_path / "empty.pem"},
         r"serve.tls_client_ca_file .*empty.pem: NO_CERTIFICATE_OR_CRL_FOUND"),
        ({**good, "tls_client_ca_file": tmp_path / "garbage.pem"},
         r"serve.tls_client_ca_file .*garbage.pem: \w+"),
    ):
        with pytest.raises(TlsRefused, match=said):
            check_tls(ServeSettings(**settings))
    # a 1024-bit key: too weak for the HTTP port, which refuses it, but gRPC alone took it
    # (as before); a key type gRPC's TLS does not take is refused though OpenSSL reads it
    weak, odd = _self_signed(tmp_path, "weak", "rsa1024"), _self_signed(tmp_path, "odd", "ed448")
    with pytest.raises(TlsRefused, match="EE_KEY_TOO_SMALL"):
        check_tls(ServeSettings(**weak))
    check_tls(ServeSettings(**weak, http_port=None))
    with pytest.raises(TlsRefused, match="odd.key: gRPC's TLS cannot use them"):
        check_tls(ServeSettings(**odd, http_port=None))


def _self_signed(folder: Path, name: str, kind: str) -> dict[str, Path]:
    """A self-signed certificate and key of ``kind`` (rsa1024, ed448) as gateway settings."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed448, rsa
    from cryptography.x509.oid import NameOID

    key = (rsa.generate_private_key(65537, 1024) if kind == "rsa1024"
           else ed448.Ed448PrivateKey.generate())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, None if kind == "ed448" else hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"tls_cert_file": folder / f"{name}.pem", "tls_key_file": folder / f"{name}.key"}


def test_a_client_certificate_without_its_key_is_refused_not_aborted(pki: Path) -> None:
    """SearchClient(tls=Tls(cert_file=...)) without key_file (or the other way round) killed
    the Python process in gRPC's C core (SIGABRT); a str path raised AttributeError; a path
    that is not there was a FileNotFoundError without a name (which of three files?)."""
    for half in ({"cert_file": Path("client.pem")}, {"key_file": "client.key"}):
        with pytest.raises(ValueError, match="cert_file and key_file go together"):
            Tls(**half)  # type: ignore[arg-type]
    files = [pki / "ca.pem", pki / "client.pem", pki / "client.key"]
    assert Tls(*map(str, files)) == Tls(*files)
    with pytest.raises(FileNotFoundError, match=r"Tls key_file: no such file: .*client.kee$"):
        Tls(files[0], files[1], pki / "client.kee")


def test_the_serve_banner_gives_commands_that_work_over_tls(pki: Path) -> None:
    """`papersearch serve` printed plaintext commands and an http:// page for a TLS gateway:
    the first commands an operator copied failed with "Socket closed"."""
    from papersearch.serving.launcher import banner

    plain = banner(ServeSettings())
    assert "--target 127.0.0.1:50051\n" in plain and "http://127.0.0.1:8000/" in plain
    mutual = banner(ServeSettings(tls_cert_file=pki / "server.pem",
                                  tls_key_file=pki / "server.key",
                                  tls_client_ca_file=pki / "ca.pem"))
    assert ('search "graph neural networks" --target 127.0.0.1:50051 --ca CA.pem --cert '
            "CLIENT.pem --key CLIENT.key\n") in mutual
    assert "https://127.0.0.1:8000/" in mutual and "http://127.0.0.1:8000/" not in mutual
