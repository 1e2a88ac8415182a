"""The deployment's TLS reverse proxy for real: nginx with deploy/nginx-runwatch.conf in
front of runwatch, with certificates made by openssl for the test.

A client certificate signed by the trusted CA makes its holder the role deploy/runwatch.toml
gives that DN; no certificate is anonymous; a DN header the client forges is replaced by
the proxy; and runwatch itself ignores the header from an address it does not trust.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runwatch.config import CONFIG_ENV, Settings, WebSettings
from runwatch.db import Database
from tests.web.liveserver import LiveServer, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIFTER = "/C=CN/O=Example Lab/OU=JUNO/CN=Jane Shifter"


def need(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if program == "nginx" else None)
    if path is None or not os.path.exists(path):
        if os.environ.get("RUNWATCH_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{program} is not installed (scripts/test.sh installs it)")
        pytest.skip(f"{program} is not installed")
    return path


def openssl(*args: str) -> None:
    subprocess.run([need("openssl"), *args], check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """A CA, the server's certificate for 127.0.0.1, a shifter's certificate from the CA,
    and a stranger's self-signed one."""
    self_signed(folder, "/CN=Test CA", "ca.key", "user-cas.pem")
    for name, subject in (("server", "/CN=127.0.0.1"), ("shifter", SHIFTER)):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            f"{folder}/{name}.key",
            "-out",
            f"{folder}/{name}.csr",
        )
        extensions = folder / f"{name}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{folder}/{name}.csr",
            "-CA",
            f"{folder}/user-cas.pem",
            "-CAkey",
            f"{folder}/ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(extensions),
            "-out",
            f"{folder}/{name}.crt",
        )
    self_signed(folder, "/CN=Stranger", "stranger.key", "stranger.crt")


def self_signed(folder: Path, subject: str, key: str, cert: str) -> None:
    new = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject]
    openssl(*new, "-keyout", str(folder / key), "-out", str(folder / cert))


def nginx_config(folder: Path, listen: int, upstream: int) -> Path:
    """deploy/nginx-runwatch.conf with this test's port, upstream and certificate folder,
    inside a main configuration that keeps everything in ``folder``."""
    site = (DEPLOY / "nginx-runwatch.conf").read_text()
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
    site = site.replace("/etc/ssl/runwatch/", f"{folder}/")
    site = site.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{upstream}")
    assert str(upstream) in site and str(listen) in site
    (folder / "site.conf").write_text(site)
    temp = folder / "temp"
    temp.mkdir(mode=0o777)
    os.chmod(temp, 0o777)  # nginx's workers run as nobody
    main = folder / "nginx.conf"
    main.write_text(
        f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log {folder}/access.log;\n"
        + "".join(
            f"  {kind}_temp_path {temp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {folder}/site.conf;\n}}\n"
    )
    return main


@pytest.fixture
def proxied(tmp_path: Path, settings: Settings, db: Database) -> Iterator[tuple[str, Path]]:
    """runwatch with deploy/runwatch.toml's [web] settings, behind nginx; the proxy's base
    URL and the certificates' folder."""
    nginx = need("nginx")
    os.environ[CONFIG_ENV] = str(DEPLOY / "runwatch.toml")
    try:
        web = Settings().web
    finally:
        del os.environ[CONFIG_ENV]
    site = settings.model_copy(
        update={"web": WebSettings(**{**web.model_dump(), "cookie_secure": False})}
    )
    folder = tmp_path / "tls"
    folder.mkdir()
    make_certificates(folder)
    server = LiveServer(site, db)
    server.start()
    port = free_port()
    proc = subprocess.Popen(
        [nginx, "-c", str(nginx_config(folder, port, server.port)), "-p", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # its error_log is in the folder
    )
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/healthz", verify=tls(folder), timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (folder / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield base, folder
    finally:
        proc.terminate()
        proc.wait(10)
        server.stop()


def tls(folder: Path, cert: str | None = None) -> ssl.SSLContext:
    """Trusting the test CA, presenting the certificate ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(folder / "user-cas.pem"))
    if cert is not None:
        context.load_cert_chain(folder / f"{cert}.crt", folder / f"{cert}.key")
    return context


def whoami(base: str, folder: Path, cert: str | None, **headers: str) -> dict[str, object]:
    with httpx.Client(verify=tls(folder, cert)) as client:
        response = client.get(base + "/api/v1/whoami", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_certificate_from_the_trusted_ca_gets_its_role(proxied: tuple[str, Path]) -> None:
    base, folder = proxied
    me = whoami(base, folder, "shifter")
    assert (me["name"], me["role"], me["via"]) == (
        "CN=Jane Shifter,OU=JUNO,O=Example Lab,C=CN",
        "shifter",
        "x509",
    )


def test_without_a_certificate_one_is_anonymous(proxied: tuple[str, Path]) -> None:
    base, folder = proxied
    assert whoami(base, folder, None)["via"] == "anonymous"


def test_a_forged_dn_header_is_replaced_by_the_proxy(proxied: tuple[str, Path]) -> None:
    base, folder = proxied
    forged = {"X-SSL-Client-S-DN": "CN=Li Expert,OU=JUNO,O=Example Lab,C=CN"}
    assert whoami(base, folder, None, **forged)["via"] == "anonymous"


def test_a_certificate_from_another_ca_is_refused(proxied: tuple[str, Path]) -> None:
    base, folder = proxied
    with httpx.Client(verify=tls(folder, "stranger")) as client:
        response = client.get(base + "/api/v1/whoami")
    # ssl_verify_client optional: nginx answers 400 to a certificate it cannot verify
    assert response.status_code == 400


def test_runwatch_ignores_the_header_from_an_untrusted_address(
    settings: Settings, db: Database
) -> None:
    """The same DN header sent straight to runwatch from an address that is not in
    trusted_proxies (here: no proxy is trusted) counts for nothing."""
    web = WebSettings(dn_roles={"CN=Li Expert,OU=JUNO,O=Example Lab,C=CN": "expert"})
    server = LiveServer(settings.model_copy(update={"web": web}), db)
    server.start()
    try:
        response = httpx.get(
            server.url + "/api/v1/whoami",
            headers={"X-SSL-Client-S-DN": "CN=Li Expert,OU=JUNO,O=Example Lab,C=CN"},
        )
    finally:
        server.stop()
    assert response.json()["via"] == "anonymous"


def test_the_dn_form_nginx_passes_is_the_one_the_example_maps() -> None:
    """nginx passes RFC 2253 DNs (most specific first, comma-separated): the example's
    dn_roles must be written that way or nobody would ever match."""
    toml = (DEPLOY / "runwatch.toml").read_text()
    for dn in re.findall(r'^"(CN=[^"]+)" = ', toml, re.MULTILINE):
        assert dn.startswith("CN=") and ",C=" in dn and "/" not in dn
