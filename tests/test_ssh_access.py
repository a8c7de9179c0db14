"""Port 22 closed between runs (no --ssh-cidr): a command that reaches the host adds a rule
for the operator's address to the deployment's security group, in the moto server, and
removes it at its end, after a SIGTERM too; a run killed with SIGKILL leaves its rule, and
the next run removes it; aws_check reports it meanwhile (aws.W040). The host is the real
sshd on loopback, reached through aws_backup's and aws_restore's connection path."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import boto3
import pytest

from conftest import ECHOED_ADDRESS
from helios_aws import backup_commands
from helios_aws.aws import ssh_access
from helios_aws.engine import STATE_NAME
from helios_aws.params import Deployment
from helios_aws.probes import aws as aws_probes
from helios_aws.probes.base import Context

SOURCE = f"{ECHOED_ADDRESS}/32"


@pytest.fixture
def deployment_dir(aws_env, sshd, tmp_path):
    """A tagged security group and instance in moto, the group recorded in state.json,
    and the sshd options."""
    ec2 = boto3.client("ec2")
    group = ec2.create_security_group(
        GroupName="helios-helios", Description="Helios",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [
            {"Key": "helios-aws:deployment", "Value": "helios"}]}])["GroupId"]
    # The instance in that group: aws_check reads the groups through it.
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                      SecurityGroupIds=[group], TagSpecifications=[{
                          "ResourceType": "instance", "Tags": [
                              {"Key": "helios-aws:deployment", "Value": "helios"}]}])
    (tmp_path / STATE_NAME).write_text(json.dumps({"security_group": {"id": group}}))
    deployment = Deployment(domain="vote.example.org", email="elections@example.org",
                            ssh_user=sshd.user)
    options = {"host": sshd.host, "ssh_port": sshd.port, "ssh_key": str(sshd.client_key),
               "known_hosts": str(sshd.known_hosts)}
    return tmp_path, group, deployment, options


def ssh_rules(group):
    # A new session each time: under enforcement, the enforced user's key from the
    # environment (boto3's default session keeps the keys it first found).
    ec2 = boto3.session.Session().client("ec2")
    found = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
    return [(r["CidrIp"], r.get("Description", "")) for p in found["IpPermissions"]
            if p.get("FromPort") == 22 for r in p.get("IpRanges", [])]


def test_the_rule_exists_only_while_the_command_holds_the_host(deployment_dir):
    out_dir, group, deployment, options = deployment_dir
    said = []
    with backup_commands.host_session(deployment, out_dir, options, said.append) as ssh:
        assert ssh.run("true").ok
        (source, description), = ssh_rules(group)
        assert source == SOURCE
        assert description.startswith(f"helios-aws run {ssh_access.owner()} pid {os.getpid()} ")
        assert " until " in description
    assert ssh_rules(group) == []
    assert any(f"opened to {SOURCE}" in line for line in said), said
    assert any("closed again" in line for line in said), said


def test_a_given_address_wins_and_a_failure_still_closes(deployment_dir):
    out_dir, group, deployment, options = deployment_dir
    with pytest.raises(RuntimeError):
        with backup_commands.host_session(deployment, out_dir,
                                          dict(options, ssh_from="203.0.113.9"), print):
            assert [s for s, _ in ssh_rules(group)] == ["203.0.113.9/32"]
            raise RuntimeError("the command failed")
    assert ssh_rules(group) == []


def test_another_operators_rule_is_left_alone(deployment_dir):
    out_dir, group, deployment, options = deployment_dir
    start = ssh_access.now()
    other = ssh_access.description(start, pid=1, who="alice@elsewhere")
    boto3.client("ec2").authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "192.0.2.5/32", "Description": other}]}])
    with backup_commands.host_session(deployment, out_dir, options, print):
        assert sorted(s for s, _ in ssh_rules(group)) == ["192.0.2.5/32", SOURCE]
    assert ssh_rules(group) == [("192.0.2.5/32", other)]


RUN = textwrap.dedent("""
    import sys, time
    from helios_aws import backup_commands
    from helios_aws.params import Deployment
    deployment = Deployment(domain="vote.example.org", email="elections@example.org",
                            ssh_user=sys.argv[2])
    options = dict(host=sys.argv[3], ssh_port=int(sys.argv[4]), ssh_key=sys.argv[5],
                   known_hosts=sys.argv[6])
    try:
        with backup_commands.host_session(deployment, sys.argv[1], options, print):
            print("holding the host", flush=True)
            time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(130)
""")


def start_run(out_dir, options, deployment):
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, str(out_dir), deployment.ssh_user, options["host"],
         str(options["ssh_port"]), options["ssh_key"], options["known_hosts"]],
        stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("holding the host"):
            return process
    pytest.fail(f"the run ended early (exit {process.wait()})")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_ended_by_a_signal(deployment_dir, how):
    out_dir, group, deployment, options = deployment_dir
    process = start_run(out_dir, options, deployment)
    (source, description), = ssh_rules(group)
    assert f" pid {process.pid} " in description
    process.send_signal(how)
    process.wait(30)
    if how == signal.SIGTERM:
        assert process.returncode == 130
        assert ssh_rules(group) == []
        return
    assert ssh_rules(group) == [(source, description)]  # killed: nothing could remove it
    def check():  # aws.W040, as aws_check runs it (a new context per run)
        return aws_probes.leftover_ssh_rules(
            Context(deployment, aws=lambda: backup_commands.AWS("us-east-1")))

    report = check()
    assert report.status == "fail" and SOURCE in report.message
    assert f"pid {process.pid}" in report.message and "0 min ago" in report.message
    # The next run removes it, and adds (then removes) its own.
    said = []
    with backup_commands.host_session(deployment, out_dir, dict(options, ssh_from="203.0.113.9"),
                                      said.append):
        assert [s for s, _ in ssh_rules(group)] == ["203.0.113.9/32"]
    assert any("Removed a leftover SSH rule" in line for line in said), said
    assert ssh_rules(group) == []
    assert check().status == "pass"


def test_the_echo_answers_an_address_or_the_command_says_what_to_give(monkeypatch):
    monkeypatch.setenv(ssh_access.ECHO_URL_VARIABLE, "http://127.0.0.1:9/")
    with pytest.raises(Exception) as refused:
        ssh_access.operator_address()
    assert "--ssh-from" in refused.value.hint
    with pytest.raises(Exception) as bad:
        ssh_access.operator_address("not-an-address")
    assert "is not an IP address" in bad.value.message


def test_the_operator_policy_allows_opening_and_closing(deployment_dir, monkeypatch):
    """Under IAM enforcement, with exactly the policy --operator-policy prints: the rule
    is read, added and removed, and each of those actions is needed."""
    from helios_aws.aws import operator
    from iam_enforcement import enforced, refused, without

    out_dir, group, deployment, options = deployment_dir
    policy = operator.policy(deployment, "123456789012")
    with enforced([policy], monkeypatch) as denials:
        with backup_commands.host_session(deployment, out_dir, options, print):
            assert [s for s, _ in ssh_rules(group)] == [SOURCE]
    assert denials.seen == []
    assert ssh_rules(group) == []
    for action in ("ec2:DescribeSecurityGroups", "ec2:AuthorizeSecurityGroupIngress",
                   "ec2:RevokeSecurityGroupIngress"):
        assert refused(without([policy], action), denials.made), action


def test_the_plan_names_the_mode_and_a_leftover_is_drift_the_next_run_removes(aws_env,
                                                                             tmp_path):
    """aws_provision's AWS half without --ssh-cidr: no standing SSH rule; the plan says
    port 22 is opened per run; a rule left by a killed run of this machine is drift."""
    from helios_aws import params, provision
    from helios_aws.engine import Output

    boto3.client("route53").create_hosted_zone(Name="example.org", CallerReference="z")
    deployment = params.build([{"domain": "vote.example.org",
                                "email": "elections@example.org"}])
    out_dir = tmp_path / "deploy"
    params.write_record(out_dir, deployment)

    def run(**options):
        lines = []
        out = Output(lines.append)
        ctx = provision.make_context(deployment, out_dir, {"skip_host": True, **options}, out)
        (provision.show_plan if options.get("plan") else provision.provision)(ctx, out)
        return "\n".join(lines)

    run()
    group = json.loads((out_dir / STATE_NAME).read_text())["security_group"]["id"]
    assert ssh_rules(group) == []
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    left = ssh_access.description(ssh_access.now(), pid=int(ended))
    boto3.client("ec2").authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "192.0.2.8/32", "Description": left}]}])

    plan = run(plan=True)
    assert "SSH (port 22): closed between runs" in plan
    assert (f"remove tcp 22 from 192.0.2.8/32 (left by the ended run of "
            f"{ssh_access.owner()})") in plan
    run()
    assert ssh_rules(group) == []
