"""aws_check's AWS probes against moto in server mode, with the resources tagged as
aws_provision tags them; SES v2's GetAccount, which moto lacks, through a Stubber. And the
test e-mail, sent by django-ses into moto."""

import json
import os

import boto3
import pytest
from botocore.stub import Stubber

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws.aws.session import AWS, TAG_KEY
from helios_aws.params import Deployment
from helios_aws.probes import base

SETTINGS = "--settings=helios_aws.settings_overrides.production"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SENDER = "elections@example.org"
ADMIN_CIDR = "203.0.113.7/32"


def tags(kind, name="helios"):
    return [{"ResourceType": kind, "Tags": [{"Key": TAG_KEY, "Value": name}]}]


def provision(name="helios", encrypted=True, tokens="required"):
    """What aws_provision leaves behind, made directly with boto3; returns ids."""
    ec2 = boto3.client("ec2")
    image = boto3.client("ssm").get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"]
    group = ec2.create_security_group(GroupName=f"helios-{name}", Description="Helios",
                                      TagSpecifications=tags("security-group", name))["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": ADMIN_CIDR}]},
        *({"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
           "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
          for port in (80, 443)),
    ])
    instance = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.small",
        SecurityGroupIds=[group], TagSpecifications=tags("instance", name),
        MetadataOptions={"HttpTokens": tokens, "HttpEndpoint": "enabled"},
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
            "VolumeSize": 16, "VolumeType": "gp3", "Encrypted": encrypted}}],
    )["Instances"][0]["InstanceId"]
    address = ec2.allocate_address(Domain="vpc", TagSpecifications=tags("elastic-ip", name))
    association = ec2.associate_address(AllocationId=address["AllocationId"],
                                        InstanceId=instance)["AssociationId"]
    route53 = boto3.client("route53")
    zone = route53.create_hosted_zone(Name="example.org", CallerReference=name)["HostedZone"]
    set_record(zone["Id"], address["PublicIp"])
    ses = boto3.client("ses")
    ses.verify_domain_identity(Domain="example.org")
    ses.verify_domain_dkim(Domain="example.org")
    ses.verify_email_identity(EmailAddress=SENDER)
    return {"group": group, "instance": instance, "ip": address["PublicIp"],
            "association": association, "zone": zone["Id"]}


def set_record(zone_id, ip):
    boto3.client("route53").change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={
        "Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": "vote.example.org", "Type": "A", "TTL": 300,
            "ResourceRecords": [{"Value": ip}]}}]})


def run_aws_probes(name="helios", aws=None):
    deployment = Deployment(name=name, domain="vote.example.org", email=SENDER)
    ctx = base.Context(deployment, aws=aws or AWS("us-east-1"))
    results = base.run([p for p in base.REGISTRY.values() if p.area == "aws"], ctx)
    return {r.id: r for r in results}


def test_provisioned_deployment_passes(aws_env):
    ids = provision()
    results = run_aws_probes()
    for probe_id in ("aws.E001", "aws.E002", "aws.E003", "aws.E004", "aws.E005",
                     "aws.E006", "aws.E007"):
        assert results[probe_id].status == "pass", results[probe_id]
    assert ids["instance"] in results["aws.E001"].message
    assert f"A vote.example.org -> {ids['ip']}" in results["aws.E006"].message
    # moto has no SES v2 GetAccount: the sandbox status is unknown, so it is skipped
    # (never passed), with the quota SES v1 still reports.
    assert results["aws.W001"].status == "skip"
    assert "0 of 200 sent" in results["aws.W001"].message
    assert "GetAccount answered HTTP 404" in results["aws.W001"].message


def test_world_open_ssh_and_extra_ports_fail_aws_E005(aws_env):
    ids = provision()
    boto3.client("ec2").authorize_security_group_ingress(GroupId=ids["group"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    ])
    result = run_aws_probes()["aws.E005"]
    assert result.status == "fail"
    assert "SSH (22) from 0.0.0.0/0" in result.message
    assert "tcp 5432-5432 from 10.0.0.0/8" in result.message
    assert result.hint


def test_detached_elastic_ip_fails_aws_E004(aws_env):
    ids = provision()
    boto3.client("ec2").disassociate_address(AssociationId=ids["association"])
    results = run_aws_probes()
    assert results["aws.E004"].status == "fail"
    assert f"{ids['ip']}" in results["aws.E004"].message
    assert "not attached" in results["aws.E004"].message
    assert results["aws.E006"].status == "pass"  # the record still names the address


def test_imdsv1_and_plain_volume_fail_aws_E002_and_E003(aws_env):
    provision(name="plain", encrypted=False, tokens="optional")
    results = run_aws_probes(name="plain")
    assert results["aws.E002"].status == "fail" and "IMDSv1" in results["aws.E002"].message
    assert results["aws.E003"].status == "fail" and "Not encrypted" in results["aws.E003"].message
    assert results["aws.E001"].status == "pass"


def test_dns_record_elsewhere_fails_aws_E006(aws_env):
    ids = provision()
    set_record(ids["zone"], "198.51.100.4")
    result = run_aws_probes()["aws.E006"]
    assert result.status == "fail"
    assert f"198.51.100.4, expected {ids['ip']}" in result.message


@pytest.mark.parametrize("domain_status, dkim_status", [
    ("Success", "Pending"), ("Pending", "NotStarted"), ("Success", "Failed")])
def test_identities_not_ready_fail_aws_E007(aws_env, domain_status, dkim_status):
    # moto verifies identities and DKIM at once; SES takes its time, or fails when the
    # DNS records are wrong: those answers come from a Stubber.
    provision()
    aws = AWS("us-east-1")
    with Stubber(aws.client("ses")) as stubber:
        stubber.add_response("get_identity_verification_attributes", {
            "VerificationAttributes": {
                "example.org": {"VerificationStatus": domain_status},
                SENDER: {"VerificationStatus": "Success"}}})
        stubber.add_response("get_identity_dkim_attributes", {"DkimAttributes": {
            "example.org": {"DkimEnabled": True, "DkimVerificationStatus": dkim_status}}})
        result = run_aws_probes(aws=aws)["aws.E007"]
    assert result.status == "fail"
    assert f"domain example.org: {domain_status}, DKIM {dkim_status}" in result.message


def account(production, sent=12.0, enabled=True):
    return {"SendQuota": {"Max24HourSend": 50000.0 if production else 200.0,
                          "MaxSendRate": 14.0, "SentLast24Hours": sent},
            "SendingEnabled": enabled, "ProductionAccessEnabled": production,
            "EnforcementStatus": "HEALTHY", "DedicatedIpAutoWarmupEnabled": False}


@pytest.mark.parametrize("response, status, words", [
    (account(production=False), "warn", "sandbox"),
    (account(production=True), "pass", "Production access"),
    (account(production=True, sent=49000.0), "warn", "daily quota left"),
    (account(production=True, enabled=False), "warn", "Sending is disabled"),
])
def test_ses_account_from_get_account(aws_env, response, status, words):
    provision()
    aws = AWS("us-east-1")
    with Stubber(aws.client("sesv2")) as stubber:
        stubber.add_response("get_account", response, {})
        result = run_aws_probes(aws=aws)["aws.W001"]
    assert result.status == status and words in result.message, result


def test_nothing_provisioned_is_skipped_not_passed(aws_env):
    results = run_aws_probes()
    for probe_id in ("aws.E001", "aws.E002", "aws.E003", "aws.E004", "aws.E005"):
        assert results[probe_id].status == "skip"
        assert f"No instance is tagged {TAG_KEY}=helios" in results[probe_id].message
    assert results["aws.E006"].status == "skip"  # no hosted zone holds the domain


def test_no_credentials_skip_every_aws_probe(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    results = run_aws_probes()
    assert {r.status for r in results.values()} == {"skip"}
    assert all(r.message == "No AWS credentials were found." and "aws configure" in r.hint
               for r in results.values())


@pytest.fixture
def configured(tmp_path):
    project = make_fixture_project(tmp_path, "requirements")
    result = run_manage(project, "aws_configure", SETTINGS, "--domain", "vote.example.org",
                        "--email", SENDER, "--auth-systems", "password", "--broker",
                        "rabbitmq", "--no-input")
    assert result.returncode == 0, result.stderr
    return project


def send_test_email(project, endpoint, **env):
    env = helios_env(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                     AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true", **env)
    result = run_manage(project, "aws_check", SETTINGS, "--only", "mail", "--format", "json",
                        "--send-test-email", "voter@example.net", env=env)
    assert result.stdout, result.stderr
    return result.returncode, {c["id"]: c for c in json.loads(result.stdout)["checks"]}


def test_send_test_email_reports_the_ses_message_id(aws_env, configured):
    boto3.client("ses").verify_email_identity(EmailAddress=SENDER)
    # This process runs with Helios's defaults (an empty HELIOS_ENV_FILE): the mail goes
    # out from a child started with the deployment's .env, as on the server.
    status, checks = send_test_email(configured, aws_env, HELIOS_ENV_FILE=os.devnull)
    assert status == 0
    check = checks["mail.E001"]
    assert check["status"] == "pass", check
    assert "SES message id" in check["message"]
    [message] = [m for m in rig.moto_data(aws_env)["ses"]["RawMessage"]
                  if "voter@example.net" in m["destinations"]]
    assert f"SES message id {message['id']}." in check["message"]
    assert message["source"] == SENDER
    assert "helios-aws test message" in message["raw_data"]


def test_send_test_email_from_an_unverified_sender_fails_mail_E001(aws_env, configured):
    env_file = configured / "deploy/.env"
    status, checks = send_test_email(configured, aws_env, HELIOS_ENV_FILE=str(env_file))
    check = checks["mail.E001"]
    assert check["status"] == "fail" and "MessageRejected" in check["message"]
    assert status == 1
