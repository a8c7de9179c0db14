"""The Debian 13 VM the host end-to-end tests run on is a usable systemd host.

Reached the way the provisioning code reaches a server: paramiko, key login, and the host key
recorded when the image was built (anything else is rejected).
"""

import http.server
import threading

import paramiko
import pytest
from vm import debian_mirrors, debian_vm  # noqa: F401  (debian_vm is a fixture)

pytestmark = pytest.mark.vm


def _client(vm, known_hosts):
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        vm.host,
        port=vm.ssh_port,
        username=vm.user,
        key_filename=str(vm.key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=30,
    )
    return client


@pytest.fixture(scope="module")
def ssh(debian_vm):
    client = _client(debian_vm, debian_vm.known_hosts)
    yield client
    client.close()


def run(client, command, timeout=300):
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def test_the_guest_presents_the_host_key_recorded_at_build(debian_vm, ssh):
    key = ssh.get_transport().get_remote_server_key()
    assert f"{key.get_name()} {key.get_base64()}" == " ".join(debian_vm.host_key_line.split()[:2])
    assert debian_vm.host_key_fingerprint.startswith("SHA256:")
    assert key.fingerprint == debian_vm.host_key_fingerprint


def test_a_different_known_host_key_is_rejected(debian_vm, tmp_path):
    # Any other ed25519 key will do: the client's own public key is not the guest's host key.
    other_key = debian_vm.key_path.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{debian_vm.host}]:{debian_vm.ssh_port} {' '.join(other_key)}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _client(debian_vm, known_hosts)


def test_the_user_has_passwordless_sudo(ssh):
    assert run(ssh, "sudo -n true")[0] == 0
    assert run(ssh, "sudo -n id -u")[1].strip() == "0"


def test_systemd_is_running(ssh):
    out = run(ssh, "systemctl is-system-running")[1]
    failed = run(ssh, "systemctl --failed --no-legend")[1]
    assert out.strip() == "running", f"failed units:\n{failed}"


def test_python_is_3_13(ssh):
    status, out, _ = run(ssh, "python3 --version")
    assert status == 0
    assert out.startswith("Python 3.13.")


def test_apt_reaches_this_machines_mirror(ssh):
    archive, security = debian_mirrors()
    status, out, err = run(ssh, "sudo -n apt-get update", timeout=600)
    assert status == 0, out + err
    assert not [line for line in (out + err).splitlines() if line.startswith(("W:", "E:", "Err"))]
    assert f"{archive} trixie InRelease" in out
    assert f"{archive} trixie-updates InRelease" in out
    if security:
        assert f"{security} trixie-security InRelease" in out


def test_the_guest_reaches_the_test_machine(debian_vm, ssh):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from the test machine")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{debian_vm.guest_host_address}:{server.server_address[1]}/"
        fetch = f"import urllib.request; print(urllib.request.urlopen('{url}').read().decode())"
        status, out, err = run(ssh, f'python3 -c "{fetch}"')
    finally:
        server.shutdown()
        server.server_close()
    assert status == 0, err
    assert out.strip() == "hello from the test machine"
