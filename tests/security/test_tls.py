"""Transport security over real TLS: the claims of docs/security.md, section "Transport".

A throwaway district CA signs the server's certificate (DNS localhost, IP 127.0.0.1); a second,
unrelated CA signs nothing the server uses.  The real ``fieldsync-server serve --ssl-certfile
--ssl-keyfile`` serves a small demo district (SQLite) over https on 127.0.0.1, and a second one
serves a certificate of the district CA for another host name only.  The device side is the real
``RequestsTransport``, ``enroll``, ``SyncClient`` and ``fieldsync`` CLI.

A refused connection is a ``NetworkError`` and leaves no trace: the store stays unenrolled and the
one-time enrollment code stays unused on the server (the same code enrolls afterwards), which shows
that the request never reached the server.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from serverkit import PIN, household

from fieldsync import KdfParams, Store
from fieldsync.errors import NetworkError
from fieldsync.identity import load_identity
from fieldsync.sync import SyncClient, enroll, enrollment
from fieldsync.transport import Request, RequestsTransport
from server_stub import demo_data
from server_stub.demo import WORKERS, build_demo
from server_stub.district import District

SERVER_START_TIMEOUT_S = 45.0
WORKER = "w-lijing"
GRID = demo_data.GRIDS[next(gi for w, _, gi in WORKERS if w == WORKER)]["id"]
HELLO = Request("GET", "/v1/hello")
CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


# -- certificates -----------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldsync tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = _validity(x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                        .public_key(key.public_key()).serial_number(x509.random_serial_number()))
    builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False))
    return key, builder.sign(key, hashes.SHA256())


def _make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               names: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = _validity(x509.CertificateBuilder().subject_name(_name("fieldsync district server"))
                        .issuer_name(ca_cert.subject).public_key(key.public_key())
                        .serial_number(x509.random_serial_number()))
    builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False))
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Pki:
    district_ca: Path  # the district's own CA: signs both server certificates
    other_ca: Path  # an unrelated CA
    server_cert: Path  # DNS localhost + IP 127.0.0.1
    server_key: Path
    other_host_cert: Path  # signed by the district CA, but for DNS other.example only
    other_host_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("fieldsync test district CA")
    _, other_cert = _make_ca("fieldsync test unrelated CA")
    server_key, server_cert = _make_leaf(ca_key, ca_cert, [x509.DNSName("localhost"),
                                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    wrong_key, wrong_cert = _make_leaf(ca_key, ca_cert, [x509.DNSName("other.example")])
    return Pki(district_ca=_write_cert(folder / "district-ca.pem", ca_cert),
               other_ca=_write_cert(folder / "other-ca.pem", other_cert),
               server_cert=_write_cert(folder / "server.pem", server_cert),
               server_key=_write_key(folder / "server-key.pem", server_key),
               other_host_cert=_write_cert(folder / "other-host.pem", wrong_cert),
               other_host_key=_write_key(folder / "other-host-key.pem", wrong_key))


# -- the district and its https servers ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_cli() -> str:
    beside = Path(sys.executable).parent / "fieldsync-server"
    found = str(beside) if beside.exists() else shutil.which("fieldsync-server")
    assert found, "the fieldsync-server command is not installed"
    return found


def _hello_over_tls(port: int, cafile: Path) -> int:
    """GET /v1/hello trusting ``cafile`` but without checking the host name: the server is up and
    its chain is the district CA's, whatever name its certificate is for."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
    try:
        conn.request("GET", "/v1/hello")
        return conn.getresponse().status
    finally:
        conn.close()


@dataclass
class TlsDistrict:
    district: District
    url: str  # https://127.0.0.1:PORT, certificate for localhost + 127.0.0.1
    port: int
    other_host_port: int  # the district CA's certificate for other.example only

    def code(self) -> str:
        return self.district.issue_code(WORKER)[0]

    def device_count(self) -> int:
        return len(self.district.devices())


@pytest.fixture(scope="module")
def tls_district(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDistrict]:
    folder = tmp_path_factory.mktemp("tls-district")
    db_url = f"sqlite:///{folder / 'district.db'}"
    district = District(db_url, attachments=folder / "attachments")
    build_demo(district, households_per_grid=4)
    env = {k: v for k, v in os.environ.items() if k not in CA_ENV and not k.startswith("FIELDSYNC_")}
    procs: list[tuple[subprocess.Popen[bytes], Path, int]] = []
    try:
        for cert, key in ((pki.server_cert, pki.server_key), (pki.other_host_cert, pki.other_host_key)):
            port = _free_port()
            log = folder / f"serve-{port}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [_server_cli(), "serve", "--db", db_url, "--host", "127.0.0.1", "--port", str(port),
                     "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--attachments", str(folder / "attachments")],
                    env=env, stdout=out, stderr=subprocess.STDOUT)
            procs.append((proc, log, port))
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        for proc, log, port in procs:  # both start at once
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"fieldsync-server serve exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
                try:
                    if _hello_over_tls(port, pki.district_ca) == 200:
                        break
                except (OSError, http.client.HTTPException):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"fieldsync-server serve did not answer over https:\n{log.read_text()}", pytrace=False)
                time.sleep(0.05)
        yield TlsDistrict(district, f"https://127.0.0.1:{procs[0][2]}", procs[0][2], procs[1][2])
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        district.close()


@pytest.fixture
def clean_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CA bundle in the environment: ``requests`` then trusts certifi's roots (the documented default)."""
    for name in CA_ENV:
        monkeypatch.delenv(name, raising=False)


def _new_store(tmp_path: Path, name: str = "tablet") -> tuple[Store, Path]:
    path = tmp_path / f"{name}.fsdb"
    return Store.create(path, PIN, kdf=KdfParams(n=2**10)), path


def _client(store: Store) -> SyncClient:
    """A client built from the store's enrollment alone (its own RequestsTransport), as ``fieldsync sync`` does."""
    return SyncClient(store, retries=0, sleep=lambda s: None)


def _assert_certificate_refusal(exc: NetworkError) -> None:
    """The refusal is TLS certificate verification (not a timeout or a closed port).  What the
    message says is checked once, in test_refusal_message_names_certificate_verification."""
    cause = exc.__cause__
    assert isinstance(cause, requests.exceptions.SSLError), repr(cause)
    assert "CERTIFICATE_VERIFY_FAILED" in str(cause), str(cause)


def _assert_nothing_sent(tls: TlsDistrict, store: Store, code: str, devices_before: int, ca: Path) -> None:
    """No enrollment on either side; the one-time code is still unused, so the request never arrived."""
    assert enrollment(store) is None
    assert load_identity(store) is None
    assert tls.device_count() == devices_before
    identity = enroll(store, tls.url, code, ca_bundle=str(ca))
    assert identity.worker_id == WORKER
    assert tls.device_count() == devices_before + 1


# -- 1. the district CA: enroll and sync over https ---------------------------------------------

def test_enroll_and_sync_over_https_with_the_district_ca(tls_district: TlsDistrict, pki: Pki, tmp_path: Path,
                                                         clean_ca_env: None) -> None:
    ca = Path(shutil.copy(pki.district_ca, tmp_path / "district-ca.pem"))  # this device's own copy
    store, path = _new_store(tmp_path)
    identity = enroll(store, tls_district.url, tls_district.code(), device_name="tls test", ca_bundle=str(ca))
    assert identity.worker_id == WORKER and identity.ca_bundle == str(ca)
    local_id = store.put("households", household(GRID, 901))
    store.close()

    # The CA path is sealed in the store with the enrollment: a client built from the reopened store
    # alone (no transport, no ca_bundle argument) syncs over https, which default roots would refuse (test 2).
    store = Store.open(path, PIN)
    stored = load_identity(store)
    assert stored is not None and stored.ca_bundle == str(ca) and stored.server_url == tls_district.url
    result = _client(store).sync()
    assert result.pushed == 1 and result.rejected == 0
    assert tls_district.district.get("households", local_id) is not None, "the pushed record did not arrive"
    households = store.list("households")
    assert len(households) >= 4 + 1, f"the demo grid's households did not arrive: {len(households)}"
    assert {h["grid_id"] for h in households} == {GRID}
    assert result.pulled >= 4

    # Moving the CA file away makes syncs fail (nothing sent, nothing lost); putting it back makes
    # them work again; the error names the file.
    ca.rename(tmp_path / "moved.pem")
    later = store.put("households", household(GRID, 902))
    with pytest.raises(NetworkError, match="CA bundle"):
        _client(store).sync()
    assert store.outbox_size() == 1 and tls_district.district.get("households", later) is None
    (tmp_path / "moved.pem").rename(ca)
    assert _client(store).sync().pushed == 1
    assert tls_district.district.get("households", later) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_both_names_of_the_certificate_are_accepted(tls_district: TlsDistrict, pki: Pki, host: str) -> None:
    transport = RequestsTransport(f"https://{host}:{tls_district.port}", ca_bundle=str(pki.district_ca))
    try:
        assert transport.handle(HELLO).status == 200
    finally:
        transport.close()


# -- 2, 3. default roots and an unrelated CA refuse the district's certificate ------------------

@pytest.mark.parametrize("trust", ["default-roots", "unrelated-ca"])
def test_untrusted_certificate_is_refused_and_nothing_is_sent(tls_district: TlsDistrict, pki: Pki, tmp_path: Path,
                                                              clean_ca_env: None, trust: str) -> None:
    ca_bundle = None if trust == "default-roots" else str(pki.other_ca)
    transport = RequestsTransport(tls_district.url, ca_bundle=ca_bundle)
    try:
        with pytest.raises(NetworkError) as info:
            transport.handle(HELLO)
        _assert_certificate_refusal(info.value)
    finally:
        transport.close()

    store, _ = _new_store(tmp_path)
    code = tls_district.code()
    before = tls_district.device_count()
    with pytest.raises(NetworkError) as info:
        enroll(store, tls_district.url, code, ca_bundle=ca_bundle)
    _assert_certificate_refusal(info.value)
    _assert_nothing_sent(tls_district, store, code, before, pki.district_ca)


def test_an_enrolled_device_given_the_wrong_ca_sends_nothing(tls_district: TlsDistrict, pki: Pki, tmp_path: Path,
                                                             clean_ca_env: None) -> None:
    """A signed sync through a transport that does not trust the server: refused before any request."""
    store, _ = _new_store(tmp_path)
    enroll(store, tls_district.url, tls_district.code(), ca_bundle=str(pki.district_ca))
    rid = store.put("households", household(GRID, 903))
    for ca_bundle in (None, str(pki.other_ca)):
        client = SyncClient(store, RequestsTransport(tls_district.url, ca_bundle=ca_bundle), retries=0,
                            sleep=lambda s: None)
        with pytest.raises(NetworkError) as info:
            client.sync()
        _assert_certificate_refusal(info.value)
        assert tls_district.district.get("households", rid) is None
        assert store.outbox_size() == 1


def test_refusal_message_names_certificate_verification(tls_district: TlsDistrict, pki: Pki,
                                                        clean_ca_env: None) -> None:
    """What a worker (or the CLI's Error: line) reads must say the certificate was not trusted,
    not merely that the server could not be reached."""
    for ca_bundle in (None, str(pki.other_ca)):
        transport = RequestsTransport(tls_district.url, ca_bundle=ca_bundle)
        with pytest.raises(NetworkError) as info:
            transport.handle(HELLO)
        transport.close()
        _assert_certificate_refusal(info.value)
        assert "certificate" in str(info.value).lower(), f"the message does not say why: {info.value}"


# -- 4. the configured CA bundle wins over the environment --------------------------------------

def test_configured_ca_bundle_wins_over_the_environment(tls_district: TlsDistrict, pki: Pki, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def set_env(ca: Path) -> None:
        for name in CA_ENV:
            monkeypatch.setenv(name, str(ca))

    def hello(ca_bundle: Path) -> int:
        transport = RequestsTransport(tls_district.url, ca_bundle=str(ca_bundle))
        try:
            return transport.handle(HELLO).status
        finally:
            transport.close()

    # Control: these variables do reach requests in this process, so the cases below test something.
    set_env(pki.district_ca)
    assert requests.get(tls_district.url + "/v1/hello", timeout=10).status_code == 200
    set_env(pki.other_ca)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_district.url + "/v1/hello", timeout=10)

    # The environment trusts the unrelated CA only: the district CA still works ...
    assert hello(pki.district_ca) == 200
    store, path = _new_store(tmp_path)
    enroll(store, tls_district.url, tls_district.code(), ca_bundle=str(pki.district_ca))
    store.put("households", household(GRID, 904))
    assert _client(store).sync().pushed == 1

    # ... and the environment trusting the district CA does not rescue a configured unrelated CA.
    set_env(pki.district_ca)
    with pytest.raises(NetworkError) as info:
        hello(pki.other_ca)
    _assert_certificate_refusal(info.value)
    other, _ = _new_store(tmp_path, "other")
    code = tls_district.code()
    before = tls_district.device_count()
    with pytest.raises(NetworkError):
        enroll(other, tls_district.url, code, ca_bundle=str(pki.other_ca))
    _assert_nothing_sent(tls_district, other, code, before, pki.district_ca)


# -- 5. a certificate of the trusted CA for another host name ----------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_certificate_for_another_host_is_refused(tls_district: TlsDistrict, pki: Pki, tmp_path: Path,
                                                 clean_ca_env: None, host: str) -> None:
    # Control: the chain itself is trusted (the district CA signed it); only the name is wrong.
    assert _hello_over_tls(tls_district.other_host_port, pki.district_ca) == 200
    url = f"https://{host}:{tls_district.other_host_port}"
    transport = RequestsTransport(url, ca_bundle=str(pki.district_ca))
    try:
        with pytest.raises(NetworkError) as info:
            transport.handle(HELLO)
        _assert_certificate_refusal(info.value)
        cause = str(info.value.__cause__).lower()
        assert "hostname" in cause or "ip address mismatch" in cause, cause
    finally:
        transport.close()

    store, _ = _new_store(tmp_path)
    code = tls_district.code()
    before = tls_district.device_count()
    with pytest.raises(NetworkError):
        enroll(store, url, code, ca_bundle=str(pki.district_ca))
    _assert_nothing_sent(tls_district, store, code, before, pki.district_ca)


# -- 6. plain http only to loopback --------------------------------------------------------------

INSECURE_URLS = ["http://192.0.2.10:8000", "http://district.example", "http://district.example:8700/",
                 "http://localhost.district.example", "http://127.0.0.1.nip.io:8000", "http://10.0.0.1"]
LOOPBACK_URLS = ["http://127.0.0.1:8700", "http://localhost:8700", "http://[::1]:8700", "http://127.1.2.3:8700"]


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every name lookup (urllib3 resolves before it connects) and fails it: no packet leaves."""
    seen: list[Any] = []

    def fake_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "lookups are disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    return seen


@pytest.mark.parametrize("url", INSECURE_URLS)
def test_plain_http_off_loopback_is_refused_before_any_connection(url: str, tmp_path: Path,
                                                                  lookups: list[Any]) -> None:
    host = url.split("//")[1].split(":")[0].rstrip("/")
    with pytest.raises(ValueError, match=f"refusing plain http to {host}") as info:
        RequestsTransport(url)
    assert "https" in str(info.value)

    store, _ = _new_store(tmp_path)
    with pytest.raises(ValueError, match=f"refusing plain http to {host}"):
        enroll(store, url, "ABCD-EFGH")
    assert enrollment(store) is None
    assert lookups == [], "a connection was attempted"

    # Allowed only when the caller says so: then it is tried, and fails as a NetworkError here.
    transport = RequestsTransport(url, allow_insecure_http=True, connect_timeout=2)
    with pytest.raises(NetworkError):
        transport.handle(HELLO)
    transport.close()
    assert lookups == [host]


@pytest.mark.parametrize("url", ["ftp://district.example", "district.example:8700", "https://", "file:///etc/passwd"])
def test_addresses_that_are_not_http_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="https://host"):
        RequestsTransport(url, allow_insecure_http=True)


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    port = _free_port()  # nothing listens there: connection refused, a NetworkError and not a ValueError
    transport = RequestsTransport(url.rsplit(":", 1)[0] + f":{port}")
    with pytest.raises(NetworkError):
        transport.handle(HELLO)
    transport.close()


def test_https_is_accepted_anywhere() -> None:
    for url in ("https://district.example", "https://192.0.2.10:8443"):
        RequestsTransport(url).close()


def _fieldsync_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_") and k not in CA_ENV}
    env.update({"FIELDSYNC_PIN": PIN, "PYTHONIOENCODING": "utf-8", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "fieldsync.cli", *args], env=env, text=True, encoding="utf-8",
                          capture_output=True, timeout=60)


def _assert_error_line(proc: subprocess.CompletedProcess[str], *expect: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_cli_enroll_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    store, path = _new_store(tmp_path)
    store.close()
    for url, host in (("http://192.0.2.10:8000", "192.0.2.10"), ("http://district.example", "district.example")):
        proc = _fieldsync_cli("enroll", "--store", str(path), "--server", url, "--code", "ABCD-EFGH")
        _assert_error_line(proc, f"refusing plain http to {host}", "https")
    with Store.open(path, PIN) as store:
        assert enrollment(store) is None


def test_cli_enroll_and_sync_over_https(tls_district: TlsDistrict, pki: Pki, tmp_path: Path) -> None:
    """``fieldsync enroll --ca-bundle`` keeps the CA; ``fieldsync sync`` (no CA option) uses it."""
    store, path = _new_store(tmp_path)
    store.close()
    code = tls_district.code()
    before = tls_district.device_count()
    proc = _fieldsync_cli("enroll", "--store", str(path), "--server", tls_district.url, "--code", code)
    _assert_error_line(proc)
    assert tls_district.device_count() == before

    proc = _fieldsync_cli("enroll", "--store", str(path), "--server", tls_district.url, "--code", code,
                          "--ca-bundle", str(pki.district_ca))
    assert proc.returncode == 0, proc.stderr
    assert f"for worker {WORKER}" in proc.stdout
    # The environment trusting the unrelated CA does not override the enrolled CA.
    proc = _fieldsync_cli("sync", "--store", str(path), "--quiet",
                          env_extra={name: str(pki.other_ca) for name in CA_ENV})
    assert proc.returncode == 0, proc.stderr
    assert "Synced:" in proc.stdout and " 0 received" not in proc.stdout, proc.stdout
