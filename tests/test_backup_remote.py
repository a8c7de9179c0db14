"""The operator's side of aws_backup and aws_restore over a real sshd on loopback, through
the verified Connection: the host's side runs from the ``current`` release with the
deployment's .env, as the host half lays it out (under a prefix). As in
test_aws_check_host.py the service user is root (this machine's Python is out of reach of
any other account), so the Deployment is built without the validation that refuses it.
"""

import io
import re
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from helios_aws import backup, backup_commands, configure, layout as layout_mod
from helios_aws.errors import HostError
from helios_aws.params import Deployment
from test_backup import DOMAIN, Site, provision_bucket
from fixtures import HELIOS_TIME_ZONE

PREFIX_CONFIG = "var/lib/helios-aws/backup.json"


@pytest.fixture(scope="module")
def host(tmp_path_factory, postgres):
    base = tmp_path_factory.mktemp("remote")
    site = Site(base, postgres, database="helios_remote")
    site.prefix = base / "host"
    app = site.prefix / "srv/helios"
    (app / "shared").mkdir(parents=True)
    (app / "config").mkdir()
    (app / "current").symlink_to(site.project)
    (site.project / ".venv").symlink_to(sys.prefix)
    (app / "tools").mkdir()
    (app / "tools/helios-aws").symlink_to(sys.prefix)  # root's own helios-aws
    site.shared_env = app / "config/.env"
    return site


@pytest.fixture
def deployed(host, aws_env, sshd):
    """The bucket in a fresh moto; the host's .env reaching it, and its backup.json."""
    name, _ = provision_bucket(host)
    boto3.client("s3").delete_bucket_policy(Bucket=name)  # see test_backup.py
    host.shared_env.write_text(
        host.env_file.read_text() + f"AWS_ENDPOINT_URL={aws_env}\nAWS_ACCESS_KEY_ID=testing\n"
        "AWS_SECRET_ACCESS_KEY=testing\nAWS_DEFAULT_REGION=us-east-1\n")
    host.shared_env.chmod(0o600)
    config = host.prefix / PREFIX_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(backup.Config(bucket=name, prefix="helios", region="us-east-1",
                                    service_user="root",
                                    time_zone=HELIOS_TIME_ZONE).as_json())
    deployment = Deployment(domain=DOMAIN, email="elections@example.org",
                            ssh_user=sshd.user, service_user="root",
                            host_prefix=str(host.prefix))
    options = {"host": sshd.host, "ssh_port": sshd.port, "ssh_key": str(sshd.client_key),
               "known_hosts": str(sshd.known_hosts)}
    return name, deployment, options


def test_backup_then_drill_run_on_the_host_over_ssh(host, deployed, tmp_path):
    bucket, deployment, options = deployed
    lines = []

    backup_commands.on_host(deployment, tmp_path, options, "aws_backup",
                            ["--kind", "daily"], lines.append, as_service=True)
    backup_commands.on_host(deployment, tmp_path, options, "drill", [],
                            lines.append)

    config = backup.Config(bucket=bucket, prefix="helios", region="us-east-1")
    newest, = backup.list_backups(config)
    assert f"backup {newest['folder']}: complete" in "\n".join(lines)
    assert f"drill {newest['folder']}: passed" in lines[-1]
    record, = backup.list_drills(config)
    assert record["passed"] is True


def test_the_backup_reads_the_shared_media_helios_really_uses(host, deployed, tmp_path):
    # As on a server: Helios's own MEDIA_ROOT (ROOT_PATH + "media/") would be
    # srv/helios/currentmedia/; the .env aws_configure writes for this layout names
    # shared/media, which the overlay makes MEDIA_ROOT.
    bucket, deployment, options = deployed
    lay = layout_mod.for_deployment(deployment, deployment.host_prefix)
    assert configure.desired_env(deployment, ["password"], {})["HELIOS_MEDIA_ROOT"] == \
        str(lay.shared_media)
    media = Path(lay.shared_media)
    (media / "voters").mkdir(parents=True, exist_ok=True)
    (media / "voters" / "shared.csv").write_text("password,v1,v1@example.org,Voter 1\n")
    before = host.shared_env.read_text()
    host.shared_env.write_text(re.sub(r"^HELIOS_MEDIA_ROOT=.*$",
                                      f"HELIOS_MEDIA_ROOT={lay.shared_media}", before,
                                      flags=re.M))
    try:
        backup_commands.on_host(deployment, tmp_path, options, "aws_backup",
                                ["--kind", "daily"], lambda line: None, as_service=True)
    finally:
        host.shared_env.write_text(before)
    config = backup.Config(bucket=bucket, prefix="helios", region="us-east-1")
    newest, = backup.list_backups(config)
    body = boto3.client("s3").get_object(Bucket=bucket, Key=newest["folder"] + backup.MEDIA)
    with tarfile.open(fileobj=io.BytesIO(body["Body"].read())) as tar:
        assert [m.name for m in tar.getmembers() if m.isfile()] == ["voters/shared.csv"]
    assert not (Path(lay.root) / "currentmedia").exists()


def test_a_failure_on_the_host_is_reported_with_its_message(host, deployed, tmp_path):
    _, deployment, options = deployed

    with pytest.raises(HostError) as failed:
        backup_commands.on_host(deployment, tmp_path, options, "drill", [], print)

    assert "drill failed on the host (exit 1)" in failed.value.message
    assert "There is no backup in s3://" in failed.value.message
