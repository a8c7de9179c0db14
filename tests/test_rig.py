"""The test rig's components really start, answer and stop."""

import socket
import ssl
import subprocess
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import boto3
import paramiko
import psycopg2
import pytest
from cryptography import x509

import rig


def test_process_failure_shows_log_tail(tmp_path):
    process = rig.Process(["sh", "-c", "echo cannot bind; exit 3"], tmp_path / "out.log")
    with pytest.raises(rig.RigError, match="cannot bind"):
        process.wait_for_port(rig.LOOPBACK, rig.free_port(), timeout=5)


def test_process_stop_ends_detached_descendants(tmp_path):
    process = rig.Process(["sh", "-c", "setsid sleep 300 & wait"], tmp_path / "out.log")
    process.wait_until(lambda: rig.process_tree(process.pid), "no child")
    [child] = rig.process_tree(process.pid)
    process.stop()
    assert not rig.still_running(*child)


def test_moto_serves_aws_over_http(aws_env):
    assert aws_env.startswith("http://127.0.0.1:")
    identity = boto3.client("sts").get_caller_identity()
    assert identity["Account"] == "123456789012"

    iam = boto3.client("iam")
    iam.create_user(UserName="helios")
    rig.moto_reset(aws_env)
    assert iam.list_users()["Users"] == []


def test_sshd_strict_host_key_and_sudo(sshd):
    assert sshd.host_key_fingerprint in subprocess.run(
        ["ssh-keygen", "-l", "-f", sshd.directory / "host_key.pub"],
        capture_output=True, text=True, check=True).stdout

    client = sshd.connect()
    try:
        _, stdout, _ = client.exec_command("sudo -n id -u")
        assert stdout.read().decode().strip() == "0"
    finally:
        client.close()


def test_sshd_reached_at_an_elastic_ip_with_another_key(sshd, tmp_path):
    elastic_ip = "127.42.7.9"
    other_key_path = tmp_path / "other_key"
    sshd.authorize(rig.keygen(other_key_path, "second key"))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_entry(elastic_ip) + "\n")

    client = paramiko.SSHClient()
    client.load_host_keys(str(tmp_path / "known_hosts"))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(elastic_ip, port=sshd.port, username=sshd.user,
                   key_filename=str(other_key_path), look_for_keys=False,
                   allow_agent=False, timeout=10)
    try:
        _, stdout, _ = client.exec_command("whoami")
        assert stdout.read().decode().strip() == sshd.user
    finally:
        client.close()


def test_changed_host_key_is_rejected(sshd, sshd_new_host_key, tmp_path):
    assert sshd_new_host_key.host_key_fingerprint != sshd.host_key_fingerprint
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"[127.0.0.1]:{sshd_new_host_key.port} {sshd.host_public_key}\n")

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(rig.LOOPBACK, port=sshd_new_host_key.port, username=sshd.user,
                       key_filename=str(sshd.client_key), look_for_keys=False,
                       allow_agent=False, timeout=10)
    client.close()


def _get(port, path="/"):
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def test_nginx_serves_reloads_and_rejects_a_broken_directive(make_nginx, tmp_path):
    port = rig.free_port()
    site = tmp_path / "site.conf"
    site.write_text(f"server {{ listen 127.0.0.1:{port}; return 200 'first'; }}\n")
    nginx = make_nginx(site)
    nginx.start(ports=[port])
    assert _get(port) == "first"

    site.write_text(f"server {{ listen 127.0.0.1:{port}; return 200 'second'; }}\n")
    nginx.reload()
    assert _get(port) == "second"

    site.write_text(f"server {{ listen 127.0.0.1:{port}; retrun 200 'third'; }}\n")
    result = nginx.test()
    assert result.returncode == 1
    assert 'unknown directive "retrun"' in result.stderr
    with pytest.raises(rig.RigError, match="retrun"):
        nginx.reload()
    assert _get(port) == "second"


def test_local_ca_certificate_served_by_nginx(make_nginx, local_ca, tmp_path):
    issued = local_ca.issue("vote.example.test", days=3)
    port = rig.free_port()
    site = tmp_path / "site.conf"
    site.write_text(
        f"server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {issued.fullchain};"
        f" ssl_certificate_key {issued.key}; return 200 'tls'; }}\n")
    make_nginx(site).start(ports=[port])

    context = ssl.create_default_context(cafile=str(issued.ca))
    with socket.create_connection((rig.LOOPBACK, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="vote.example.test") as tls:
            der = tls.getpeercert(binary_form=True)
    left = x509.load_der_x509_certificate(der).not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=2, hours=23) < left <= timedelta(days=3)

    with socket.create_connection((rig.LOOPBACK, port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            context.wrap_socket(raw, server_hostname="other.example.test")


def test_pebble_issues_a_certificate_to_certbot(pebble, tmp_path):
    assert pebble.directory_url.startswith("https://localhost:")
    context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
    with urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=context)).open(
                pebble.directory_url, timeout=5) as response:
        assert "newOrder" in response.read().decode()

    live = pebble.certbot_certonly("vote.example.test", tmp_path / "www", tmp_path / "le")
    cert = x509.load_pem_x509_certificate((live / "fullchain.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["vote.example.test"]
    assert (live / "privkey.pem").exists()


def test_postgres_accepts_connections(postgres):
    with psycopg2.connect(postgres.database_url) as connection:
        with connection.cursor() as cursor:
            cursor.execute("select current_database(), current_setting('server_encoding')")
            assert cursor.fetchone() == ("helios", "UTF8")
    connection.close()
    with psycopg2.connect(host=postgres.env["PGHOST"], port=postgres.env["PGPORT"],
                          user=postgres.env["PGUSER"], dbname="helios") as connection:
        assert connection.server_version >= 150000
    connection.close()


def test_redis_answers_ping(redis_url):
    address = urllib.parse.urlsplit(redis_url)
    rig.wait_for_port(address.hostname, address.port, timeout=1)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"


def test_rabbitmq_accepts_an_amqp_connection(rabbitmq_url):
    import kombu

    with kombu.Connection(rabbitmq_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
        with connection.SimpleQueue("rig-check") as queue:
            queue.put({"ok": True})
            assert queue.get(timeout=5).payload == {"ok": True}
