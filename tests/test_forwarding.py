"""The voter's address: Helios stores the first entry of X-Forwarded-For with every cast
vote, so the nginx sites aws_configure renders must pass on the peer's address alone,
whatever forwarding headers the client sent."""

import http.client
import json
import re

import pytest

from helios_aws import configure as configure_mod
from test_configure_real import TLSConnection, prefixed, served

DOMAIN = "vote.example.org"
SPOOFED = "203.0.113.66"
# Headers a voter could send to choose the address Helios records (or the host, port or
# scheme Django and gunicorn see), each twice and in odd spellings.
SPOOFING_HEADERS = [
    ("X-Forwarded-For", SPOOFED),
    ("x-forwarded-for", f"{SPOOFED}, 198.51.100.1"),
    ("X-Real-IP", SPOOFED),
    ("Forwarded", f"for={SPOOFED};proto=https;host=evil.example"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "8443"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Client-IP", SPOOFED),
    ("True-Client-IP", SPOOFED),
    ("CF-Connecting-IP", SPOOFED),
    ("X-Cluster-Client-IP", SPOOFED),
    ("Client-IP", SPOOFED),
    ("X_Forwarded_For", SPOOFED),  # the same WSGI key as X-Forwarded-For
]
# nginx variables whose value the client chooses.
CLIENT_VARIABLE_RE = re.compile(
    r"\$(?:http_\w+|proxy_add_x_forwarded_for|arg_\w+|cookie_\w+|args|query_string|"
    r"request_uri|uri|request)\b")


def ask_address(port, *, https, ca=None):
    """GET /helios/voter-address with every spoofing header; the fixture's JSON answer."""
    conn = TLSConnection(port, ca, DOMAIN) if https else \
        http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", "/helios/voter-address", skip_host=True)
    conn.putheader("Host", DOMAIN)
    for name, value in SPOOFING_HEADERS:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200, body
    return json.loads(body)


@pytest.mark.parametrize("site", ["helios-https.conf", "helios-http.conf"])
def test_helios_sees_only_the_peer_address(tmp_path, make_nginx, local_ca, site):
    https = site == "helios-https.conf"
    # The first-boot site serves Helios over HTTP, before the certificate.
    env = {} if https else {"SSL": "0"}
    with served(tmp_path, make_nginx, local_ca, site, **env) as (http_port, https_port, cert,
                                                                  _):
        seen = ask_address(https_port if https else http_port, https=https, ca=cert.ca)
    assert seen["cast_ip"] == "127.0.0.1"
    headers = seen["headers"]
    assert headers["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert headers["HTTP_X_REAL_IP"] == "127.0.0.1"
    assert headers["HTTP_X_FORWARDED_PROTO"] == ("https" if https else "http")
    assert headers["HTTP_HOST"] == DOMAIN
    leaked = {key: value for key, value in headers.items()
              if SPOOFED in value or "evil.example" in value or value in ("on", "8443")}
    assert leaked == {}


def test_no_rendered_site_forwards_a_client_chosen_value(tmp_path):
    project, _ = prefixed(tmp_path, 8080, 8443)
    sites = sorted((project / "deploy/nginx").glob("*.conf"))
    assert [p.name for p in sites] == ["helios-http.conf", "helios-https.conf"]
    for site in sites:
        text = site.read_text()
        proxied = re.findall(r"^\s*proxy_set_header\s+(\S+)\s+(.*);$", text, re.M)
        headers = {name.lower(): value for name, value in proxied}
        assert headers["x-forwarded-for"] == "$remote_addr", site.name
        assert headers["x-real-ip"] == "$remote_addr", site.name
        for name in configure_mod.DROPPED_FORWARDING_HEADERS:
            assert headers[name.lower()] == '""', (site.name, name)
        for name, value in proxied:
            if name.lower() != "host":  # Host is checked against ALLOWED_HOSTS by Django
                assert not CLIENT_VARIABLE_RE.search(value), (site.name, name, value)
        assert "proxy_add_x_forwarded_for" not in text and "$http_x_forwarded" not in text
        # nginx's defaults drop header names with underscores (X_Forwarded_For reaches
        # Django as HTTP_X_FORWARDED_FOR): the sites never turn that off.
        assert "underscores_in_headers" not in text and "ignore_invalid_headers" not in text
    # Nor does any template, rendered into these sites or not.
    for template in sorted(configure_mod.TEMPLATE_DIR.rglob("*")):
        if template.is_file():
            text = template.read_text()
            assert "proxy_add_x_forwarded_for" not in text, template
            assert not re.search(r"\$http_(x_|forwarded|client|true_client|cf_)", text), template
