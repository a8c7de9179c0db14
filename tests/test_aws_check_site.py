"""aws_check's site probes against the real thing on loopback: nginx with the site file
aws_configure rendered, gunicorn serving the Helios-like fixture, PostgreSQL, and a
certificate from a local CA; then each bad case, which must fail its own check id."""

import json
import os
import re
import shutil
import socket
import sys
import time

import pytest

import rig
from helios_aws import envfile
from helios_aws.params import Deployment
from helios_aws.probes import base
from fixtures import helios_env, make_fixture_project, run_manage

DOMAIN = "vote.example.org"
SETTINGS = "--settings=helios_aws.settings_overrides.production"


class Site:
    """The fixture deployed under a host prefix and served on two loopback ports."""

    def __init__(self, base, postgres, ca):
        self.base = base
        self.ca = ca
        self.http_port, self.https_port = rig.free_port(), rig.free_port()
        self.project = make_fixture_project(base, "requirements")
        self.prefix = base / "host"
        result = run_manage(
            self.project, "aws_configure", SETTINGS, "--domain", DOMAIN, "--email",
            "elections@example.org", "--auth-systems", "password", "--broker", "rabbitmq",
            "--host-prefix", str(self.prefix), "--http-port", str(self.http_port),
            "--https-port", str(self.https_port), "--no-input")
        assert result.returncode == 0, result.stderr
        self.deploy = self.project / "deploy"
        self.env_file = self.deploy / ".env"
        with self.env_file.open("a") as env:
            env.writelines(f"{key}={value}\n" for key, value in postgres.env.items())
        migrated = run_manage(self.project, "migrate", SETTINGS, env=self.env())
        assert migrated.returncode == 0, migrated.stderr
        self.live = self.prefix / "etc/letsencrypt/live" / DOMAIN
        self.live.mkdir(parents=True)
        self.good_cert = ca.issue(DOMAIN)
        self.install(self.good_cert)
        (self.prefix / "srv/helios").mkdir(parents=True)
        os.symlink(self.project, self.prefix / "srv/helios/current")
        self.socket = self.prefix / "run/gunicorn.sock"
        self.socket.parent.mkdir(parents=True)
        self.gunicorns = [self.gunicorn(self.socket)]
        self.good_site = (self.deploy / "nginx/helios-https.conf").read_text()
        self.site_file = base / "site.conf"
        self.site_file.write_text(self.good_site)
        self.nginx = rig.Nginx(base / "nginx", self.site_file)
        self.nginx.start(ports=[self.http_port, self.https_port])

    def env(self, **extra):
        return helios_env(HELIOS_ENV_FILE=str(self.env_file), **extra)

    def gunicorn(self, socket_path, **extra):
        """gunicorn as its unit starts it: the .env as EnvironmentFile, plus HELIOS_ENV_FILE."""
        unit_env = self.env(**{**envfile.parse(self.env_file.read_text()), **extra})
        process = rig.Process(
            [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind",
             f"unix:{socket_path}", "wsgi:application"],
            self.base / f"{socket_path.name}.log", env=unit_env, cwd=self.project)
        process.wait_until(socket_path.exists, "gunicorn did not create its socket")
        return process

    def install(self, cert):
        shutil.copy(cert.fullchain, self.live / "fullchain.pem")
        shutil.copy(cert.key, self.live / "privkey.pem")

    def serve(self, site_text=None, cert=None):
        """Serve another site file and/or certificate (None: the good ones)."""
        self.site_file.write_text(site_text or self.good_site)
        self.install(cert or self.good_cert)
        self.nginx.reload()

    def check(self, *args, address="127.0.0.1"):
        """Run aws_check as an operator would; return (exit status, JSON report)."""
        result = run_manage(self.project, "aws_check", SETTINGS, "--format", "json",
                            "--address", address, "--ca-file", str(self.ca.ca_file),
                            *args, env=self.env())
        assert result.stdout, result.stderr
        return result.returncode, json.loads(result.stdout), result.stderr

    def stop(self):
        self.nginx.stop()
        for process in self.gunicorns:
            process.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres, local_ca):
    served = Site(tmp_path_factory.mktemp("site"), postgres, local_ca)
    yield served
    served.stop()


@pytest.fixture
def fresh(site):
    """The site with its good configuration again after the test."""
    yield site
    site.serve()


def by_id(report):
    return {c["id"]: c for c in report["checks"]}


def test_good_site_passes_every_site_check(site):
    status, report, stderr = site.check("--only", "site,config")
    checks = by_id(report)
    assert status == 0, stderr
    assert report["version"] == 1 and report["verdict"] == "pass"
    for probe_id in ("site.E002", "site.E003", "site.E004", "site.E005", "site.E006",
                     "site.E007", "site.E008", "site.E009", "site.W001", "site.W002"):
        assert checks[probe_id]["status"] == "pass", checks[probe_id]
    assert checks["site.E002"]["message"].endswith(
        f"answers 301 to https://{DOMAIN}:{site.https_port}/helios/elections/params"
        "?helios-aws-check=redirect.")
    assert "ETag" in checks["site.W002"]["message"]
    # No Elastic IP recorded yet: the DNS probe says so instead of passing.
    assert checks["site.E001"]["status"] == "skip"
    assert "state.json" in checks["site.E001"]["message"]
    # The deployment's .env is clean: every helios_aws check passes, and Django's two
    # false positives are explained, not counted.
    assert all(checks[f"helios_aws.{i}"]["status"] == "pass"
               for i in ("E001", "E002", "E007", "E010", "W001"))
    assert checks["security.W004"]["status"] == "pass"
    assert "site.W001" in checks["security.W004"]["message"]
    for check in report["checks"]:
        assert set(check) == {"id", "area", "level", "status", "message", "hint", "seconds"}


def test_text_report_groups_by_area_with_a_verdict(site):
    result = run_manage(site.project, "aws_check", SETTINGS, "--only", "site",
                        "--address", "127.0.0.1", "--ca-file", str(site.ca.ca_file),
                        "--no-color", env=site.env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Checking {DOMAIN} (deployment in {site.deploy})"
    assert "Site" in lines
    assert any(re.match(r"  pass  site\.E005 +Valid for vote\.example\.org", line)
               for line in lines)
    assert re.match(r"PASS: 0 failed, 0 warned, 1 skipped, 10 passed in \d+\.\d\d s",
                    lines[-1])


def test_no_redirect_fails_site_E002(fresh):
    plain = re.sub(r"return 301 https://\$host[^;]*;", 'return 200 "plain HTTP\\n";',
                   fresh.good_site)
    fresh.serve(site_text=plain)
    status, report, stderr = fresh.check("--only", "site")
    check = by_id(report)["site.E002"]
    assert check["status"] == "fail" and "without redirecting" in check["message"]
    assert check["hint"]
    assert status == 1 and "site.E002" in stderr


def test_wrong_host_in_the_certificate_fails_site_E005(fresh, local_ca):
    fresh.serve(cert=local_ca.issue("other.example.org"))
    status, report, _ = fresh.check("--only", "site")
    checks = by_id(report)
    assert checks["site.E005"]["status"] == "fail"
    assert "Hostname mismatch" in checks["site.E005"]["message"]
    # Only the certificate probe judges the certificate.
    assert checks["site.E003"]["status"] == "pass"
    assert status == 1


def test_certificate_from_an_unknown_ca_fails_site_E005(fresh, tmp_path):
    fresh.serve(cert=rig.self_signed_cert(tmp_path, DOMAIN))
    _, report, _ = fresh.check("--only", "site.E005")
    assert by_id(report)["site.E005"]["status"] == "fail"
    assert "self-signed" in by_id(report)["site.E005"]["message"]


def test_certificate_expiring_in_3_days_fails_site_E006(fresh, local_ca):
    fresh.serve(cert=local_ca.issue(DOMAIN, days=3))
    status, report, _ = fresh.check("--only", "site.E006,site.E005")
    checks = by_id(report)
    assert checks["site.E006"]["status"] == "fail"
    assert re.search(r"expires in [23]\.\d days", checks["site.E006"]["message"])
    assert checks["site.E005"]["status"] == "pass"  # still valid today
    assert status == 1


def test_certificate_expiring_in_15_days_warns(fresh, local_ca):
    fresh.serve(cert=local_ca.issue(DOMAIN, days=15))
    status, report, _ = fresh.check("--only", "site.E006")
    assert by_id(report)["site.E006"]["status"] == "warn"
    assert status == 0 and report["verdict"] == "warn"  # a warning fails no default run


def test_a_welcome_page_for_other_names_fails_site_E009(fresh):
    # As on Debian with its default site enabled: the bare address, or any name the site
    # does not serve, gets "Welcome to nginx!".
    ours = re.sub(r"\nserver \{\n    listen \d+ default_server;.*?\n\}\n", "\n",
                  fresh.good_site, flags=re.S)
    assert "return 444;" not in ours
    welcome = (ours + "server {\n    listen %d default_server;\n    server_name _;\n"
               "    return 200 '<h1>Welcome to nginx!</h1>';\n}\n" % fresh.http_port)
    fresh.serve(site_text=welcome)
    status, report, stderr = fresh.check("--only", "site.E009")
    check = by_id(report)["site.E009"]
    assert check["status"] == "fail", check
    assert "127.0.0.1 answers nginx's welcome page" in check["message"]
    assert "sites-enabled/default" in check["hint"]
    assert status == 1 and "site.E009" in stderr


def test_missing_hsts_warns_site_W001(fresh):
    # The same project with HSTS=0, behind the same nginx: Helios sends no header.
    socket_path = fresh.prefix / "run/no-hsts.sock"
    fresh.gunicorns.append(fresh.gunicorn(socket_path, HSTS="0"))
    fresh.serve(site_text=fresh.good_site.replace(str(fresh.socket), str(socket_path)))
    status, report, stderr = fresh.check("--only", "site", "--fail-level", "warning")
    check = by_id(report)["site.W001"]
    assert check["status"] == "warn" and check["level"] == "warning"
    assert "without Strict-Transport-Security" in check["message"]
    assert status == 1 and "site.W001" in stderr


def test_static_file_served_by_django_warns_site_W002(fresh):
    without_aliases = re.sub(r"\n    location /(static|booth|verifier)[^{]*\{[^}]*alias[^}]*\}\n",
                             "\n", fresh.good_site)
    # (the published election seals keep theirs: they are not Helios's static files)
    assert re.findall(r"alias ([^;]*);", without_aliases) == [
        re.search(r"alias ([^;]*helios-seal/);", fresh.good_site).group(1)]
    fresh.serve(site_text=without_aliases)
    _, report, _ = fresh.check("--only", "site.W002")
    check = by_id(report)["site.W002"]
    assert check["status"] == "warn"
    assert "served by Django" in check["message"] and "X-Frame-Options" in check["message"]


def test_a_silent_server_is_bounded_by_the_timeout(site):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        started = time.monotonic()
        status, report, _ = site.check("--only", "site", "--timeout", "1",
                                       "--http-port", str(port), address=f"127.0.0.1:{port}")
        elapsed = time.monotonic() - started
    checks = by_id(report)
    for probe_id in ("site.E002", "site.E003", "site.E005", "site.E006"):
        assert checks[probe_id]["status"] == "fail", checks[probe_id]
    assert report["seconds"] < 2.5
    assert elapsed < 10  # the whole command, Django's start-up included
    assert status == 1


def test_dns_probe_compares_the_domain_with_the_elastic_ip():
    # The system resolver, for real: "localhost" is the one name that resolves here.
    deployment = Deployment(domain="localhost")
    target = base.Target("localhost", "localhost", 80, 443, 80, 443)

    def dns(public_ip):
        ctx = base.Context(deployment, state={"elastic_ip": {"public_ip": public_ip}},
                           target=target)
        return base.run_one(base.REGISTRY["site.E001"], ctx)

    assert dns("127.0.0.1").status == "pass"
    wrong = dns("127.0.0.2")
    assert wrong.status == "fail" and wrong.id == "site.E001"
    assert wrong.message == "localhost resolves to 127.0.0.1, not to the Elastic IP 127.0.0.2."
    assert "A record" in wrong.hint


@pytest.mark.parametrize("switch, extra, said", [
    ("shut", {}, None),
    ("autologin", {"URL_HOST": "http://localhost:8000"}, "Open: the autologin"),
    ("debug", {"DEBUG": "1"}, "DEBUG is on"),
    ("debug and local hosts", {"DEBUG": "1", "ALLOWED_HOSTS": f"{DOMAIN},localhost"},
     "the development login for Host: localhost"),
])
def test_helios_development_switches_are_shut_site_E008(fresh, switch, extra, said):
    socket_path = fresh.prefix / f"run/{switch.replace(' ', '-')}.sock"
    fresh.gunicorns.append(fresh.gunicorn(socket_path, **extra))
    site_text = fresh.good_site.replace(str(fresh.socket), str(socket_path))
    if "local hosts" in switch:
        # The generated site answers no other name, so Host: localhost never reaches
        # Helios through it: a site edited to forward every name is what opens it.
        site_text = site_text[:site_text.index("# Any other name")]
    fresh.serve(site_text=site_text)

    _, report, _ = fresh.check("--only", "site.E008")

    check = by_id(report)["site.E008"]
    if said is None:
        assert check["status"] == "pass", check
    else:
        assert check["status"] == "fail" and said in check["message"], check
