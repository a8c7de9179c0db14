"""Fixtures for the real local stand-ins in rig.py.

Each component starts the first time a test asks for it and stops when its scope ends,
so a test run starts only what its tests use.
"""

import os

import pytest

import rig

# Variables of the machine's own AWS set-up that would change what boto3 does in a test.
AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CA_BUNDLE",
)


@pytest.fixture(scope="session")
def rig_dir(tmp_path_factory):
    """The session's directory for the components' data and logs."""
    return tmp_path_factory.mktemp("rig")


@pytest.fixture(scope="session")
def moto_server():
    """The URL (http://127.0.0.1:PORT) of a moto server shared by the session."""
    server = rig.MotoServer()
    yield server.url
    server.stop()


ECHOED_ADDRESS = "198.51.100.23"


@pytest.fixture(scope="session")
def address_echo():
    """A loopback stand-in for AWS's address echo, answering ECHOED_ADDRESS."""
    from helios_aws.rehearse.aws import AddressEcho

    echo = AddressEcho(ECHOED_ADDRESS)
    yield echo.url
    echo.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch, tmp_path, address_echo):
    """An AWS environment that reaches only the moto server, which is emptied first
    (then given Debian 13's image parameters, which moto lacks).

    boto3 finds it through AWS_ENDPOINT_URL, keys "testing" and region us-east-1; no
    profile, no config or credentials file, no instance metadata. Yields the URL.
    """
    for name in AWS_VARIABLES_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name in os.environ:
        if name.startswith("AWS_ENDPOINT_URL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Port 22 is opened to what the echo answers, never to this machine's real address.
    monkeypatch.setenv("HELIOS_AWS_ADDRESS_ECHO_URL", address_echo)
    rig.moto_fresh(moto_server)
    yield moto_server


@pytest.fixture(scope="session")
def sshd(rig_dir):
    """A real OpenSSH server (rig.SshServer) for user helios-aws-test, who may sudo."""
    server = rig.SshServer.start(rig_dir / "ssh")
    yield server
    server.stop()


@pytest.fixture
def sshd_new_host_key(sshd):
    """A second sshd like `sshd` (same user and client key) with another host key and
    port, stopped after the test."""
    with sshd.with_new_host_key() as server:
        yield server


@pytest.fixture(scope="session")
def local_ca(rig_dir):
    """A rig.LocalCA: local_ca.issue(name, days=...) gives certificate files."""
    return rig.LocalCA(rig_dir / "ca")


@pytest.fixture
def make_nginx(tmp_path):
    """make_nginx(site_file, prefix=None) -> rig.Nginx (not started); every one made is
    stopped after the test."""
    made = []

    def make(site, prefix=None):
        server = rig.Nginx(prefix or tmp_path / f"nginx-{len(made)}", site)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def pebble(rig_dir, local_ca):
    """A rig.Pebble ACME server: directory_url, ca_bundle, certbot_certonly()."""
    server = rig.Pebble(rig_dir / "pebble", local_ca)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A rig.Postgres cluster with a database `helios`: env (PGHOST, PGPORT, PGUSER),
    database_url, port, socket_dir."""
    server = rig.Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(rig_dir):
    """redis://127.0.0.1:PORT/0 of a private redis-server."""
    server = rig.Redis(rig_dir / "redis")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(rig_dir):
    """amqp://guest:guest@127.0.0.1:PORT// of a private RabbitMQ node (starts in ~7 s)."""
    server = rig.RabbitMQ(rig_dir / "rabbitmq")
    yield server.url
    server.stop()
