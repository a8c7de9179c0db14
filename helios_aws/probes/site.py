"""Site probes: the deployment as a visitor's browser meets it.

Every connection goes to the target address (the domain itself unless ``--address``
says otherwise) but names the domain in the Host header and in TLS's SNI, so a site can
be checked before DNS points at it, or on loopback. The certificate is judged by
``site.E005`` alone: the other HTTPS probes do not verify it, so that one bad certificate
does not fail every probe.
"""

import datetime
import http.client
import json
import re
import socket
import ssl

from ..host.base import LIVENESS_PATH  # Helios answers it without the database
from .base import Skip, failed, passed, probe, warned

READINESS_PATH = "/"  # reads elections and writes a session: needs the database
REDIRECT_PROBE_PATH = "/helios/elections/params?helios-aws-check=redirect"
MAX_BODY = 1 << 20
EXPIRY_ERROR_DAYS = 7
EXPIRY_WARNING_DAYS = 21
MODERN_TLS = ("TLSv1.2", "TLSv1.3")
# nginx's own ETag: "<mtime hex>-<size hex>". Django never makes one of this shape, and
# nginx never adds an ETag to a response it proxies.
NGINX_ETAG_RE = re.compile(r'^(W/)?"[0-9a-f]+-[0-9a-f]+"$')
# Headers Helios's Django middleware puts on every response it makes.
DJANGO_MARKERS = ("X-Frame-Options", "Referrer-Policy", "Cross-Origin-Opener-Policy",
                  "X-Content-Type-Options", "Strict-Transport-Security")


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name) or ""


def _tls_context(target, verify):
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # With a CA file given, trust only it: the machine's SSL_CERT_FILE must not decide.
    if target.ca_file:
        return ssl.create_default_context(cafile=target.ca_file)
    return ssl.create_default_context()


def tls_socket(target, timeout, verify):
    """A TLS connection to the target's HTTPS port, with the domain as SNI."""
    raw = socket.create_connection((target.address, target.https_port), timeout=timeout)
    try:
        return _tls_context(target, verify).wrap_socket(raw, server_hostname=target.domain)
    except BaseException:
        raw.close()
        raise


def _host_header(target, https):
    port, default = ((target.public_https_port, 443) if https
                     else (target.public_http_port, 80))
    return target.domain if port == default else f"{target.domain}:{port}"


def fetch(ctx, path, https=True, host=None):
    """GET ``path`` from the site (HTTPS without verifying the certificate, or plain
    HTTP) with the domain, or ``host``, as the Host header; redirects are not followed."""
    target = ctx.target
    if https:
        sock = tls_socket(target, ctx.timeout, verify=False)
    else:
        sock = socket.create_connection((target.address, target.http_port),
                                        timeout=ctx.timeout)
    connection = http.client.HTTPConnection(target.address, timeout=ctx.timeout)
    connection.sock = sock
    try:
        connection.request("GET", path, headers={
            "Host": host or _host_header(target, https), "User-Agent": "helios-aws-check",
            "Accept": "*/*"})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read(MAX_BODY))
    finally:
        connection.close()


def _liveness(ctx):
    return ctx.once(("GET", LIVENESS_PATH), lambda: fetch(ctx, LIVENESS_PATH))


def _url(target, path, https=True):
    return f"{'https' if https else 'http'}://{_host_header(target, https)}{path}"


def _require_target(ctx):
    if ctx.target is None:
        raise Skip("No site to probe: the deployment has no domain.")
    return ctx.target


@probe("site.E001", "The domain resolves to the deployment's Elastic IP",
       "Point the domain's A record at the Elastic IP (aws_provision manages it in "
       "Route 53), remove other A/AAAA records, and wait for the old TTL to pass.")
def dns_points_at_elastic_ip(ctx):
    target = _require_target(ctx)
    expected = (ctx.state.get("elastic_ip") or {}).get("public_ip")
    if not expected:
        raise Skip("No Elastic IP is recorded in state.json: run aws_provision first.")
    try:
        infos = socket.getaddrinfo(target.domain, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        return failed(f"{target.domain} does not resolve: {exc.strerror}.")
    found = sorted({info[4][0] for info in infos})
    if found == [expected]:
        return passed(f"{target.domain} resolves to {expected} only.")
    if expected in found:
        others = ", ".join(a for a in found if a != expected)
        return failed(f"{target.domain} resolves to {expected} but also to {others}.")
    return failed(f"{target.domain} resolves to {', '.join(found)}, not to the Elastic IP "
                  f"{expected}.")


@probe("site.E002", "HTTP answers 301 to the same host and path over HTTPS",
       "Serve the HTTPS site file (nginx/helios-https.conf): its port-80 server answers "
       "`return 301 https://$host$request_uri;` for everything but ACME challenges.")
def http_redirects_to_https(ctx):
    target = _require_target(ctx)
    expected = _url(target, REDIRECT_PROBE_PATH)
    response = fetch(ctx, REDIRECT_PROBE_PATH, https=False)
    location = response.header("Location")
    if response.status == 301 and location == expected:
        return passed(f"{_url(target, REDIRECT_PROBE_PATH, https=False)} answers 301 to "
                      f"{expected}.")
    if response.status in (301, 302, 303, 307, 308):
        return failed(f"HTTP answers {response.status} to {location or '(no Location)'}, "
                      f"expected 301 to {expected}.")
    return failed(f"HTTP answers {response.status} without redirecting to HTTPS.")


def _page_probe(ctx, path, what):
    _require_target(ctx)
    response = _liveness(ctx) if path == LIVENESS_PATH else fetch(ctx, path)
    url = _url(ctx.target, path)
    if response.status != 200:
        location = response.header("Location")
        detail = f" to {location}" if location else ""
        return failed(f"{url} answers {response.status}{detail}.")
    return passed(f"{url} answers 200 ({what}).")


@probe("site.E003", "HTTPS answers 200 on the liveness page (no database)",
       "Look at `journalctl -u gunicorn` and nginx's error log on the host: 502 means "
       "gunicorn is not answering on its socket, 400 a Host missing from ALLOWED_HOSTS.")
def liveness(ctx):
    result = _page_probe(ctx, LIVENESS_PATH, "the application answers")
    if result.status == "pass":
        try:
            json.loads(_liveness(ctx).body)
        except ValueError:
            return failed(f"{_url(ctx.target, LIVENESS_PATH)} answers 200 but not with "
                          "Helios's JSON: another application answers for the domain.")
    return result


@probe("site.E004", "HTTPS answers 200 on / (the database is reachable)",
       "The application runs but the home page fails: check PostgreSQL and the "
       "migrations (host.E005, host.E007) and `journalctl -u gunicorn` on the host.")
def readiness(ctx):
    return _page_probe(ctx, READINESS_PATH, "with the database")


@probe("site.E005", "The certificate chain is valid for the domain",
       "Renew or re-issue the certificate for the domain (`sudo certbot renew` or "
       "aws_provision); nginx must serve fullchain.pem, not cert.pem.")
def certificate_valid(ctx):
    target = _require_target(ctx)
    try:
        with tls_socket(target, ctx.timeout, verify=True) as tls:
            cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return failed(f"The certificate is not valid for {target.domain}: "
                      f"{exc.verify_message or exc.reason}.")
    issuer = dict(item[0] for item in cert.get("issuer", ()))
    names = ", ".join(value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    return passed(f"Valid for {target.domain} (names: {names}; issuer: "
                  f"{issuer.get('organizationName') or issuer.get('commonName', '?')}).")


def _handshake(ctx):
    """Version and certificate (DER) of one TLS handshake that trusts anything."""
    def connect():
        with tls_socket(ctx.target, ctx.timeout, verify=False) as tls:
            return tls.version(), tls.getpeercert(binary_form=True)

    return ctx.once("tls-handshake", connect)


@probe("site.E006", f"The certificate is valid for {EXPIRY_ERROR_DAYS}+ days "
                    f"(warning under {EXPIRY_WARNING_DAYS})",
       "Renewal is not working: check `systemctl list-timers helios-certbot-renew.timer` "
       "and `sudo certbot renew --dry-run` on the host. Let's Encrypt no longer e-mails "
       "before expiry.")
def certificate_expiry(ctx):
    from cryptography import x509

    _require_target(ctx)
    _, der = _handshake(ctx)
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    left = not_after - datetime.datetime.now(datetime.timezone.utc)
    days = left.total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        return failed(f"The certificate expired on {when}.")
    if days < EXPIRY_ERROR_DAYS:
        return failed(f"The certificate expires in {days:.1f} days ({when}).")
    if days < EXPIRY_WARNING_DAYS:
        return warned(f"The certificate expires in {days:.1f} days ({when}).")
    return passed(f"The certificate is valid for {int(days)} more days ({when}).")


@probe("site.E007", "TLS 1.2 or newer is negotiated",
       "Set `ssl_protocols TLSv1.2 TLSv1.3;` in the nginx site (aws_configure renders it) "
       "and reload nginx.")
def tls_version(ctx):
    _require_target(ctx)
    version, _ = _handshake(ctx)
    if version in MODERN_TLS:
        return passed(f"The server negotiates {version}.")
    return failed(f"The server negotiates {version}.")


@probe("site.W001", "HTTPS responses carry Strict-Transport-Security",
       "Set HSTS=1 in the .env and restart gunicorn: Helios's HSTSMiddleware sends the "
       "header (which is why `check --deploy` shows security.W004 regardless).")
def hsts_header(ctx):
    _require_target(ctx)
    response = _liveness(ctx)
    value = response.header("Strict-Transport-Security")
    match = re.search(r"max-age=(\d+)", value)
    if match and int(match.group(1)) > 0:
        return passed(f"Strict-Transport-Security: {value}")
    if value:
        return failed(f"Strict-Transport-Security has no positive max-age: {value}")
    return failed(f"{_url(ctx.target, LIVENESS_PATH)} answers {response.status} without "
                  "Strict-Transport-Security.")


def _django_markers(response):
    return [name for name in DJANGO_MARKERS if response.header(name)]


@probe("site.W002", "Static files are served by nginx, not by Django",
       "Add nginx `location ... { alias ...; }` blocks for the static trees (aws_configure "
       "derives them from the URLconf) so gunicorn's workers are not tied up with files.")
def static_served_by_nginx(ctx):
    _require_target(ctx)
    if not ctx.static_file:
        raise Skip("The project's URLconf serves no static files to look for.")
    path = ctx.static_file
    response = fetch(ctx, path)
    url = _url(ctx.target, path)
    if response.status != 200:
        return failed(f"{url} answers {response.status}.")
    etag = response.header("ETag")
    from_django = _django_markers(response)
    if NGINX_ETAG_RE.match(etag):
        return passed(f"{url} comes from nginx (its ETag {etag}).")
    reference = _django_markers(_liveness(ctx))
    if reference and not from_django:
        return passed(f"{url} comes from nginx (none of Django's headers "
                      f"{', '.join(reference)}).")
    evidence = ", ".join(from_django) or "no nginx ETag"
    return failed(f"{url} is served by Django ({evidence}).")


# Helios's development switches (HELIOS.md), each asked for over HTTPS: (what, path, Host
# header or None for the domain). Shut, each answers 404 (or, for a host nginx or Django
# refuses, an error), never a page or a redirect.
DEV_AUTOLOGIN = "/helios/autologin"  # open while URL_HOST contains localhost/127.0.0.1
DEV_LOGIN = "/auth/devlogin/login"  # open with DEBUG, for a local Host
MISSING_PATH = "/helios-aws-check/no-such-page"
DEBUG_MARKER = b"DEBUG = True"  # in Django's technical 404 and 500 pages
SWITCHES = (
    ("the autologin", DEV_AUTOLOGIN, None),
    ("the development login", DEV_LOGIN, None),
    ("the development login for Host: localhost", DEV_LOGIN, "localhost"),
    ("the development login for Host: 127.0.0.1", DEV_LOGIN, "127.0.0.1"),
)


@probe("site.E008", "Helios's development switches are shut (autologin, devlogin, DEBUG)",
       "Set DEBUG=0, URL_HOST=https://DOMAIN and ALLOWED_HOSTS=DOMAIN in the .env "
       "(aws_configure writes them; helios_aws.E001, E012, E017 say which is wrong) and "
       "restart gunicorn.")
def development_switches(ctx):
    target = _require_target(ctx)
    open_ = []
    for what, path, host in SWITCHES:
        response = fetch(ctx, path, host=host)
        if 200 <= response.status < 400:
            open_.append(f"{what} ({_url(target, path)}"
                         + (f" with Host: {host}" if host else "")
                         + f" answers {response.status})")
    missing = fetch(ctx, MISSING_PATH)
    if DEBUG_MARKER in missing.body:
        open_.append(f"DEBUG is on ({_url(target, MISSING_PATH)} shows Django's debug page)")
    if open_:
        return failed("Open: " + "; ".join(open_) + ".")
    return passed("The autologin and the development login answer 404 (also for a local "
                  "Host), and a missing page shows no debug information.")


UNKNOWN_HOST = "unknown-name.helios-aws-check.invalid"


@probe("site.E009", "Any other name, and the bare address, get no site over HTTP",
       "Disable the distribution's default site (`sudo rm /etc/nginx/sites-enabled/default "
       "&& sudo systemctl reload nginx` on Debian) and re-run aws_provision: the generated "
       "site's default server closes such connections.")
def unknown_host_gets_nothing(ctx):
    target = _require_target(ctx)
    answers = []
    for host in (UNKNOWN_HOST, target.address):
        try:
            response = fetch(ctx, "/", https=False, host=host)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            continue  # closed without an answer: nginx's 444
        if response.status < 400:
            what = ("nginx's welcome page" if b"Welcome to nginx" in response.body
                    else f"{response.status}")
            answers.append(f"Host {host} answers {what}")
    if answers:
        return failed("; ".join(answers) + ".")
    return passed(f"HTTP with Host {UNKNOWN_HOST} or {target.address} gets no site.")
