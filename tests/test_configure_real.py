"""The files aws_configure writes, read by the real programs that will read them on the host:
nginx, systemd-analyze, Django and gunicorn."""

import contextlib
import http.client
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path


import rig
from fixtures import helios_env, make_fixture_project, run_manage
from test_configure import BASE, SETTINGS, configure, read_env

DOMAIN = "vote.example.org"
UNITS = ["gunicorn.socket", "gunicorn.service", "helios-celery.service",
         "helios-certbot-renew.service", "helios-certbot-renew.timer",
         "helios-backup.service", "helios-backup.timer", "helios-seal.service",
         "helios-seal.timer"]


def configured(tmp_path, *extra):
    project = make_fixture_project(tmp_path)
    result = configure(project, *BASE, *extra)
    assert result.returncode == 0, result.stderr
    return project


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    project = configured(tmp_path)
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    executables = set()
    for unit in UNITS:
        text = (project / "deploy/systemd" / unit).read_text()
        (unit_dir / unit).write_text(text)
        # (after systemd's prefixes: "+" full privileges, "-" failure ignored...)
        executables.update(re.findall(r"^Exec\w+=[-+!@:]*(\S+)", text, re.M))
    assert "/srv/helios/current/.venv/bin/gunicorn" in executables
    for path in executables:
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *UNITS],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr

    # The same check catches a broken unit: it is a real validator, not a formality.
    (unit_dir / "gunicorn.service").write_text(
        (unit_dir / "gunicorn.service").read_text().replace("KillMode=", "KilMode="))
    broken = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "gunicorn.service"],
                            capture_output=True, text=True)
    assert "KilMode" in broken.stderr


def install_certificate(prefix, local_ca):
    cert = local_ca.issue(DOMAIN)
    live = prefix / "etc/letsencrypt/live" / DOMAIN
    live.mkdir(parents=True)
    shutil.copy(cert.fullchain, live / "fullchain.pem")
    shutil.copy(cert.key, live / "privkey.pem")
    return cert


def prefixed(tmp_path, http_port, https_port, *extra):
    prefix = tmp_path / "host"
    project = configured(tmp_path, "--host-prefix", str(prefix), "--http-port", str(http_port),
                         "--https-port", str(https_port), *extra)
    return project, prefix


def test_nginx_accepts_both_sites_and_rejects_a_broken_one(tmp_path, make_nginx, local_ca):
    project, prefix = prefixed(tmp_path, rig.free_port(), rig.free_port())
    install_certificate(prefix, local_ca)
    for site in ("helios-http.conf", "helios-https.conf"):
        result = make_nginx(project / "deploy/nginx" / site).test()
        assert result.returncode == 0, result.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text((project / "deploy/nginx/helios-https.conf").read_text()
                      .replace("ssl_protocols", "ssl_protocolz"))
    result = make_nginx(broken).test()
    assert result.returncode != 0 and "ssl_protocolz" in result.stderr


def test_each_os_gets_the_http2_form_its_nginx_reads(tmp_path, make_nginx, local_ca):
    """Debian 13's nginx (1.26) warns about `listen ... http2` and wants `http2 on;`;
    Amazon Linux 2023's (1.24, 1.22 on its first images) rejects `http2 on;`. The rig turns
    the Debian 13 site into the older form for this machine's nginx 1.22: that rewrite
    gives exactly the site generated for Amazon Linux, which this nginx validates as is."""
    ports = rig.free_port(), rig.free_port()
    sites = {}
    for os_name in ("debian13", "al2023"):
        project, prefix = prefixed(tmp_path / os_name, *ports, "--os", os_name)
        install_certificate(prefix, local_ca)
        sites[os_name] = project / "deploy/nginx/helios-https.conf"
    debian, amazon = (sites[o].read_text() for o in ("debian13", "al2023"))
    assert "\n    http2 on;\n" in debian and not re.search(r"listen .*http2", debian)
    assert "http2 on;" not in amazon and re.search(r"listen \d+ ssl http2;", amazon)
    readable = rig.site_for_this_nginx(debian)
    if rig.nginx_version() < rig.HTTP2_DIRECTIVE_SINCE:
        # Apart from the prefix in paths, the sites differ in the http2 form only.
        assert readable.replace("/debian13/", "/al2023/") == amazon
    else:
        assert readable == debian
    served = make_nginx(sites["al2023"])
    assert served.installed_site == sites["al2023"]  # read as generated
    result = served.test()
    assert result.returncode == 0, result.stderr


def django_env(project):
    """The environment systemd gives the units: the .env as EnvironmentFile."""
    env_file = project / "deploy/.env"
    return helios_env(**read_env(env_file), HELIOS_ENV_FILE=str(env_file))


def test_overlay_feeds_the_raw_settings_readers_and_check_deploy(tmp_path):
    project = configured(tmp_path)
    env_file = project / "deploy/.env"
    # Only HELIOS_ENV_FILE: the overlay must load the .env before Helios's settings.
    env = helios_env(HELIOS_ENV_FILE=str(env_file))
    raw = run_manage(project, "shell", SETTINGS, "--no-imports", "-c",
                     "import helios_auth.views as v, settings; "
                     "print(settings.URL_HOST, v.after_login_url(), settings.DEBUG)", env=env)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.split() == ["https://vote.example.org",
                                  "https://vote.example.org/auth/after/", "False"]

    deploy = run_manage(project, "check", "--deploy", SETTINGS, env=env)
    found = set(re.findall(r"\((\w+\.[EW]\d+)\)", deploy.stdout + deploy.stderr))
    assert found == {"security.W003", "security.W004"}, deploy.stdout + deploy.stderr

    listed = run_manage(project, "help", SETTINGS, env=env)
    for command in ("aws_configure", "aws_provision", "aws_check"):
        assert command in listed.stdout

    # Values already in the environment win over the .env.
    env["URL_HOST"] = "https://override.example.org"
    over = run_manage(project, "shell", SETTINGS, "--no-imports", "-c",
                      "import settings; print(settings.URL_HOST)", env=env)
    assert over.stdout.strip() == "https://override.example.org"


def test_settings_py_edit_installs_the_app_too(tmp_path):
    project = make_fixture_project(tmp_path)
    settings = project / "settings.py"
    text = settings.read_text()
    assert "INSTALLED_APPS = (" in text
    settings.write_text(text.replace("INSTALLED_APPS = (", "INSTALLED_APPS = (\n    'helios_aws',", 1))
    listed = run_manage(project, "help", env=helios_env())
    assert "aws_configure" in listed.stdout


class TLSConnection(http.client.HTTPConnection):
    """HTTPS to 127.0.0.1 with the domain as SNI, trusting only the given CA."""

    def __init__(self, port, ca, server_name):
        super().__init__("127.0.0.1", port, timeout=10)
        self.context = ssl.create_default_context(cafile=str(ca))
        self.server_name = server_name

    def connect(self):
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.server_name)


def request(port, path, *, https=False, ca=None, host=DOMAIN):
    if https:
        conn = TLSConnection(port, ca, host)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


@contextlib.contextmanager
def served(tmp_path, make_nginx, local_ca, site="helios-https.conf", **env):
    """The project as the host serves it, under a prefix: gunicorn on the unit's socket
    (``env`` on top of the .env), behind real nginx with the rendered ``site``. Yields
    (http_port, https_port, the certificate, gunicorn's process)."""
    http_port, https_port = rig.free_port(), rig.free_port()
    project, prefix = prefixed(tmp_path, http_port, https_port)
    cert = install_certificate(prefix, local_ca)
    app_dir = prefix / "srv/helios"
    app_dir.mkdir(parents=True)
    os.symlink(project, app_dir / "current")
    socket_path = prefix / "run/gunicorn.sock"
    socket_path.parent.mkdir(parents=True)
    gunicorn = rig.Process(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", f"unix:{socket_path}",
         "--access-logfile", "-", "wsgi:application"],
        tmp_path / "gunicorn.log", env={**django_env(project), **env}, cwd=app_dir / "current")
    try:
        gunicorn.wait_until(socket_path.exists, "gunicorn did not create its socket")
        https = site == "helios-https.conf"
        make_nginx(project / "deploy/nginx" / site).start(
            ports=[http_port, https_port] if https else [http_port])
        yield http_port, https_port, cert, gunicorn
    finally:
        gunicorn.stop()


def test_gunicorn_behind_the_rendered_nginx_site(tmp_path, make_nginx, local_ca):
    with served(tmp_path, make_nginx, local_ca) as (http_port, https_port, cert, gunicorn):
        response, _ = request(http_port, "/helios/elections/params?x=1")
        assert response.status == 301
        assert response.getheader("Location") == \
            f"https://{DOMAIN}:{https_port}/helios/elections/params?x=1"

        response, body = request(https_port, "/helios/elections/params", https=True, ca=cert.ca)
        assert response.status == 200, body
        assert response.getheader("Strict-Transport-Security")

        response, body = request(https_port, "/static/logo.png", https=True, ca=cert.ca)
        assert response.status == 200 and body.startswith(b"\x89PNG")
        assert response.getheader("Server", "").startswith("nginx")
        assert response.getheader("ETag")  # nginx's own static handler, not Django's serve
        assert "/helios/elections/params" in Path(gunicorn.log_path).read_text()
        static_hits = [line for line in Path(gunicorn.log_path).read_text().splitlines()
                       if "logo.png" in line]
        assert static_hits == []
