"""Steps 3, 6 and 10: the key pair, the EC2 instance, and the instance's SSH host key."""

import datetime
import hashlib
import os
import re
import uuid
from pathlib import Path

import botocore.exceptions
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..engine import (ADOPT, ADOPTED, CREATE, CREATED, DEFERRED, KEEP, UPDATE, UPDATED, Change,
                      duration)
from ..errors import ConfigError
from . import account, pricing
from .base import AWSStep, ec2_name, note, pick, poll, tag_filter, tag_spec
from .console import parse_host_keys
from .session import call, error_code, translate, wait

KEY_FILE = "ssh-key.pem"
PUBLIC_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/]+={0,2}(\s.*)?\Z")
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def key_file(ctx):
    return ctx.out_dir / KEY_FILE


def read_public_key(path):
    """The operator's public key (``TYPE BASE64``), checked as EC2 will import it."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "it is not UTF-8 text"
        raise ConfigError(f"Cannot read the public key {path}: {reason}.",
                          "Give the .pub file of your SSH key with aws_configure "
                          "--ssh-public-key.")
    if not PUBLIC_KEY_RE.match(text):
        raise ConfigError(f"{path} is not an OpenSSH ed25519 or RSA public key.",
                          "EC2 imports ssh-ed25519 and ssh-rsa keys; give the .pub file.")
    return " ".join(text.split()[:2])


def saved_public_key(path):
    """The public half (``TYPE BASE64``) of the private key a provision saved, so a new key
    pair can be imported from it: the operator keeps one key across a --destroy."""
    hint = ("Move the file away (it may be the only key to an older server), or give the "
            f"key's public half: `ssh-keygen -y -f {path} > {path}.pub` and aws_configure "
            f"--ssh-public-key {path}.pub.")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the saved private key {path}: {exc.strerror}.", hint)
    key = None
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            key = load(data, password=None)
            break
        except TypeError:
            raise ConfigError(f"{path} is protected by a passphrase: its public half, which "
                              "would become the key pair, cannot be read.", hint)
        except (ValueError, UnsupportedAlgorithm):
            continue
    if key is None:
        raise ConfigError(f"{path} exists, but is not an SSH private key: no key pair can "
                          "be made from it, and a new one would overwrite it.", hint)
    if not isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
        raise ConfigError(f"{path} is not an ed25519 or RSA key, the only kinds EC2 imports.",
                          hint)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


class KeyPairStep(AWSStep):
    """The EC2 key pair: the operator's public key imported, or a new ed25519 pair whose
    private key is saved (0600) in the output directory. An existing key file is never
    overwritten: when the pair is gone (after --destroy), the key file's public half is
    imported as the new pair, so the operator keeps one key."""

    name = "key pair"
    state_key = "key_pair"

    def read(self, ctx):
        ec2 = ctx.aws.client("ec2")
        pairs = ctx.aws.cached("key_pairs", lambda: call(
            "list the deployment's key pairs", ec2.describe_key_pairs,
            Filters=tag_filter(ctx))["KeyPairs"])
        pair = pick(ctx, "key pair", pairs, "KeyPairId", self.record(ctx).get("id"))
        if pair:
            ctx.facts["key_name"] = pair["KeyName"]
        if key_file(ctx).exists():
            ctx.facts["ssh_key_file"] = str(key_file(ctx))
        return {"pair": pair}

    def plan(self, ctx, current):
        pair = current["pair"]
        public_path = ctx.deployment.ssh_public_key
        recorded = self.record(ctx)
        if pair is None:
            wanted = self._public_key(ctx)
            if wanted is None:
                return Change(CREATE, f"new ed25519 key pair {ec2_name(ctx)}; private key "
                                      f"saved to {key_file(ctx)} (0600)")
            return Change(CREATE, f"import {wanted[1]} as key pair {ec2_name(ctx)}")
        if public_path:
            public = read_public_key(public_path)
            imported = recorded.get("public_key_sha256")
            if imported and imported != _sha256(public):
                return Change(UPDATE, f"re-import {public_path} (it changed; only new "
                                        "instances get the new key)")
        elif not key_file(ctx).exists():
            note(ctx, f"The private key of key pair {pair['KeyName']} is not in "
                      f"{key_file(ctx)}: give SSH the key by --ssh-key.")
        return self.kept_or_adopted(recorded.get("id") == pair["KeyPairId"],
                                    f"{pair['KeyName']} ({pair['KeyPairId']})")

    def _public_key(self, ctx):
        """(public key, where it comes from) to import, or None when EC2 must make a new
        pair: the operator's --ssh-public-key, else the public half of the private key an
        earlier provision saved (a destroyed deployment comes back with the same key)."""
        public_path = ctx.deployment.ssh_public_key
        if public_path:
            return read_public_key(public_path), str(public_path)
        if key_file(ctx).exists():
            return (saved_public_key(key_file(ctx)),
                    f"the public half of the saved private key {key_file(ctx)}")
        return None

    def apply(self, ctx, current, change):
        ec2 = ctx.aws.client("ec2")
        pair = current["pair"]
        record = {"id": pair["KeyPairId"]} if pair else {}
        if change.action == ADOPT:
            return self.adopt(ctx, **record)
        ctx.aws.forget("key_pairs")
        name = ec2_name(ctx)
        hints = {"InvalidKeyPair.Duplicate": f"A key pair named {name} exists without "
                 "this deployment's tag: delete it (aws ec2 delete-key-pair --key-name "
                 f"{name}) and run the command again."}
        wanted = self._public_key(ctx)
        if wanted:
            public, source = wanted
            if pair:
                call("delete the old key pair", ec2.delete_key_pair, KeyName=pair["KeyName"])
            made = call("import the key pair", ec2.import_key_pair, hints=hints,
                        KeyName=name, PublicKeyMaterial=public.encode(),
                        TagSpecifications=tag_spec(ctx, "key-pair"))
            self.save_record(ctx, id=made["KeyPairId"], public_key_sha256=_sha256(public))
            if not ctx.deployment.ssh_public_key:
                note(ctx, f"Key pair {name} was imported from {source}: the server takes "
                          "the same key as before, and the file was left as it was.")
        else:
            made = call("create the key pair", ec2.create_key_pair, hints=hints,
                        KeyName=name, KeyType="ed25519",
                        TagSpecifications=tag_spec(ctx, "key-pair"))
            self.save_record(ctx, id=made["KeyPairId"])
            self._save_private_key(ctx, ctx.secret(made["KeyMaterial"]))
            ctx.facts["ssh_key_file"] = str(key_file(ctx))
        ctx.facts["key_name"] = name
        return CREATED if pair is None else UPDATED

    def _save_private_key(self, ctx, material):
        path = key_file(ctx)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} appeared while the key pair was being made; it was "
                              "not overwritten.",
                              "Move it away, delete the key pair "
                              f"{ec2_name(ctx)} and run the command again.")
        with os.fdopen(fd, "w") as handle:
            handle.write(material if material.endswith("\n") else material + "\n")

    def teardown(self, ctx, current):
        pair = current["pair"]
        return [f"key pair {pair['KeyName']} ({pair['KeyPairId']})"] if pair else []

    def destroy(self, ctx, current):
        pair = current["pair"]
        if not pair:
            return []
        # By name: moto ignores KeyPairId here (AWS takes either).
        call("delete the key pair", ctx.aws.client("ec2").delete_key_pair,
             KeyName=pair["KeyName"])
        ctx.state.set(self.state_key, None)
        done = [f"deleted key pair {pair['KeyName']}"]
        if key_file(ctx).exists():
            done.append(f"kept the private key {key_file(ctx)} (provisioning this "
                        "deployment again imports its public half as the new key pair)")
        return done


def root_volume_id(instance):
    for mapping in instance.get("BlockDeviceMappings") or ():
        if mapping["DeviceName"] == instance.get("RootDeviceName"):
            return mapping["Ebs"]["VolumeId"]
    return None


class InstanceStep(AWSStep):
    """The server: encrypted gp3 root volume, IMDSv2 required, the mail instance profile,
    tags. Found by tag and state (not by client token: moto ignores it, and a terminated
    instance must not count). Waits, bounded, until it runs and passes its status checks.
    """

    name = "EC2 instance"
    state_key = "instance"
    # Bounds of the waits, in seconds: AWS usually needs one and three minutes.
    running_timeout = 600
    status_timeout = 900
    profile_timeout = 90

    def read(self, ctx):
        ec2 = ctx.aws.client("ec2")
        reservations = ctx.aws.cached("instances", lambda: call(
            "list the deployment's instances", ec2.describe_instances,
            Filters=tag_filter(ctx) + [{"Name": "instance-state-name", "Values": LIVE_STATES}],
        )["Reservations"])
        instances = sorted((i for r in reservations for i in r["Instances"]),
                           key=lambda i: i["LaunchTime"])
        instance = pick(ctx, "instance", instances, "InstanceId", self.record(ctx).get("id"))
        if instance:
            ctx.facts["instance_id"] = instance["InstanceId"]
            ctx.facts["root_volume_id"] = root_volume_id(instance)
        return {"instance": instance}

    def plan(self, ctx, current):
        d = ctx.deployment
        instance = current["instance"]
        profile_arn = ctx.facts.get("instance_profile_arn")
        if instance is None:
            self._check_instance_type(ctx)
            return Change(CREATE, f"{d.instance_type} from {account.current_image(ctx)}, "
                                  f"{d.volume_size} GiB encrypted gp3 root volume, "
                                  "IMDSv2 required" + (", mail instance profile"
                                                       if profile_arn else ""))
        iid, state = instance["InstanceId"], instance["State"]["Name"]
        details = []
        if state in ("stopped", "stopping"):
            details.append(f"start {iid} (it is {state})")
        elif state == "pending":
            details.append(f"wait until {iid} runs and passes its status checks")
        if (instance.get("MetadataOptions") or {}).get("HttpTokens") != "required":
            details.append("require IMDSv2 (HttpTokens required)")
        if profile_arn and (instance.get("IamInstanceProfile") or {}).get("Arn") != profile_arn:
            details.append(f"attach the instance profile {profile_arn.rsplit('/', 1)[-1]}")
        if instance["InstanceType"] != d.instance_type:
            note(ctx, f"{iid} is a {instance['InstanceType']}, the deployment says "
                      f"{d.instance_type}: this tool does not resize a server. Stop it, change "
                      "its type (aws ec2 modify-instance-attribute) and start it.")
        if details:
            return Change(UPDATE, *details)
        return self.kept_or_adopted(self.record(ctx).get("id") == iid,
                                    f"{iid} ({instance['InstanceType']}, {state})")

    def _check_instance_type(self, ctx):
        d = ctx.deployment
        ec2 = ctx.aws.client("ec2")
        found = ctx.aws.cached(("instance_type", d.instance_type), lambda: call(
            f"look up the instance type {d.instance_type}", ec2.describe_instance_types,
            missing=("InvalidInstanceType",), InstanceTypes=[d.instance_type]))
        if not found or not found["InstanceTypes"]:
            raise ConfigError(
                f"--instance-type {d.instance_type} does not exist in region {ctx.aws.region}.",
                "Choose an offered type, e.g. t3.small (list them with aws ec2 "
                "describe-instance-types), and run aws_configure --instance-type again.",
            )
        arches = found["InstanceTypes"][0]["ProcessorInfo"]["SupportedArchitectures"]
        if d.arch not in arches:
            raise ConfigError(
                f"{d.instance_type} runs {', '.join(arches)}, but the deployment's --arch "
                f"is {d.arch}.",
                "Use --arch arm64 with Graviton types (t4g, m7g...), or an x86_64 type.",
            )

    def apply(self, ctx, current, change):
        instance = current["instance"]
        if change.action == ADOPT:
            return self.adopt(ctx, id=instance["InstanceId"])
        ctx.aws.forget("instances")
        if instance is None:
            iid = self._launch(ctx)
            ctx.facts["instance_created"] = True
            self._wait_ready(ctx, iid)
            return CREATED
        self._repair(ctx, instance)
        self.save_record(ctx, id=instance["InstanceId"])
        return UPDATED

    def _launch(self, ctx):
        d = ctx.deployment
        ec2 = ctx.aws.client("ec2")
        # A client token makes a retried launch return the same instance on AWS; it is kept
        # until the instance is recorded, so an interrupted launch is not repeated.
        token = self.record(ctx).get("client_token") or uuid.uuid4().hex
        self.save_record(ctx, client_token=token)
        image_id = account.current_image(ctx)
        images = call(f"read the image {image_id}", ec2.describe_images,
                      ImageIds=[image_id])["Images"]
        params = {
            "ImageId": image_id,
            "InstanceType": d.instance_type,
            "KeyName": ctx.facts["key_name"],
            "SecurityGroupIds": [ctx.facts["security_group_id"]],
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": token,
            "BlockDeviceMappings": [{
                "DeviceName": images[0].get("RootDeviceName") or "/dev/xvda",
                "Ebs": {"VolumeSize": d.volume_size, "VolumeType": "gp3",
                        "Encrypted": True, "DeleteOnTermination": True},
            }],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1},
            "TagSpecifications": tag_spec(ctx, "instance") + tag_spec(ctx, "volume"),
        }
        if ctx.facts.get("instance_profile_arn"):
            params["IamInstanceProfile"] = {"Arn": ctx.facts["instance_profile_arn"]}

        def attempt():
            try:
                return ec2.run_instances(**params)["Instances"][0]
            except botocore.exceptions.ClientError as exc:
                # A new instance profile takes a few seconds to be usable (IAM is
                # eventually consistent): AWS says it is invalid meanwhile.
                message = str(exc).lower().replace(" ", "")
                if error_code(exc) == "InvalidParameterValue" and "iaminstanceprofile" in message:
                    return None
                raise

        with translate("launch the EC2 instance", {
            "Unsupported": "AWS has no capacity of that type in the zone it picked: run "
                           "the command again, or choose another --instance-type.",
            "InstanceLimitExceeded": "Ask AWS for a higher vCPU limit (Service Quotas), "
                                     "or choose a smaller --instance-type.",
        }):
            instance = poll(attempt, "use the new instance profile", self.profile_timeout, 5,
                            "Run the command again; IAM may be slow to publish the profile.")
        iid = instance["InstanceId"]
        self.save_record(ctx, id=iid)
        ctx.facts["instance_id"] = iid
        ctx.facts["root_volume_id"] = root_volume_id(instance)
        ctx.detail(f"launched {iid}")
        return iid

    def _repair(self, ctx, instance):
        ec2 = ctx.aws.client("ec2")
        iid, state = instance["InstanceId"], instance["State"]["Name"]
        if (instance.get("MetadataOptions") or {}).get("HttpTokens") != "required":
            call("require IMDSv2", ec2.modify_instance_metadata_options, InstanceId=iid,
                 HttpTokens="required", HttpEndpoint="enabled")
        profile_arn = ctx.facts.get("instance_profile_arn")
        if profile_arn and (instance.get("IamInstanceProfile") or {}).get("Arn") != profile_arn:
            associations = call("read the instance profile association",
                                ec2.describe_iam_instance_profile_associations,
                                Filters=[{"Name": "instance-id", "Values": [iid]},
                                         {"Name": "state", "Values": ["associated"]}],
                                )["IamInstanceProfileAssociations"]
            if associations:
                call("replace the instance profile", ec2.replace_iam_instance_profile_association,
                     AssociationId=associations[0]["AssociationId"],
                     IamInstanceProfile={"Arn": profile_arn})
            else:
                call("attach the instance profile", ec2.associate_iam_instance_profile,
                     InstanceId=iid, IamInstanceProfile={"Arn": profile_arn})
        if state == "stopping":
            wait(ec2.get_waiter("instance_stopped"), f"see {iid} stopped",
                 self.running_timeout, delay=10, InstanceIds=[iid])
        if state in ("stopped", "stopping"):
            call(f"start {iid}", ec2.start_instances, InstanceIds=[iid])
        self._wait_ready(ctx, iid)

    def _wait_ready(self, ctx, iid):
        ec2 = ctx.aws.client("ec2")
        wait(ec2.get_waiter("instance_running"), f"see {iid} running",
             self.running_timeout, delay=10, InstanceIds=[iid])
        wait(ec2.get_waiter("instance_status_ok"), f"see {iid} pass its status checks",
             self.status_timeout, delay=15, InstanceIds=[iid])

    def stop(self, ctx, current):
        """Stop the instance (``--stop``); returns what happened."""
        instance = self._require(current)
        iid, state = instance["InstanceId"], instance["State"]["Name"]
        if state == "stopped":
            return f"{iid} is already stopped."
        ec2 = ctx.aws.client("ec2")
        call(f"stop {iid}", ec2.stop_instances, InstanceIds=[iid])
        wait(ec2.get_waiter("instance_stopped"), f"see {iid} stopped",
             self.running_timeout, delay=10, InstanceIds=[iid])
        return f"Stopped {iid}."

    def start(self, ctx, current):
        """Start the instance (``--start``) and wait until it passes its status checks."""
        instance = self._require(current)
        iid, state = instance["InstanceId"], instance["State"]["Name"]
        if state == "running":
            return f"{iid} is already running."
        self._repair(ctx, instance)
        return f"Started {iid}."

    def _require(self, current):
        if current["instance"] is None:
            raise ConfigError("This deployment has no instance.",
                              "Run aws_provision (without --stop/--start) to create it.")
        return current["instance"]

    def snapshot(self, ctx, current):
        """Snapshot the root volume before --destroy; returns the snapshot id or None."""
        volume_id = current["instance"] and root_volume_id(current["instance"])
        if not volume_id:
            return None
        ec2 = ctx.aws.client("ec2")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
        snapshot = call(
            f"snapshot the root volume {volume_id}", ec2.create_snapshot, VolumeId=volume_id,
            Description=f"helios-aws {ctx.deployment.name}: root volume of "
                        f"{current['instance']['InstanceId']} before --destroy",
            TagSpecifications=tag_spec(ctx, "snapshot", f"{ec2_name(ctx)}-{stamp}"))
        wait(ec2.get_waiter("snapshot_completed"), f"complete the snapshot of {volume_id}",
             3600, delay=15, SnapshotIds=[snapshot["SnapshotId"]])
        return snapshot["SnapshotId"]

    def cost_lines(self, ctx):
        d = ctx.deployment
        usd, source = pricing.instance_price(ctx.aws, d.region, d.instance_type)
        ctx.facts["instance_price_source"] = source
        return [(f"EC2 {d.instance_type} (on demand, all month)", usd),
                (f"EBS gp3 root volume, {d.volume_size} GiB", pricing.gp3_month(d.volume_size))]

    def teardown(self, ctx, current):
        instance = current["instance"]
        if not instance:
            return []
        return [f"instance {instance['InstanceId']} ({instance['InstanceType']}, "
                f"{instance['State']['Name']}) and its root volume"]

    def destroy(self, ctx, current):
        instance = current["instance"]
        if not instance:
            return []
        ec2 = ctx.aws.client("ec2")
        iid = instance["InstanceId"]
        call(f"terminate {iid}", ec2.terminate_instances, InstanceIds=[iid])
        wait(ec2.get_waiter("instance_terminated"), f"see {iid} terminated",
             self.running_timeout, delay=10, InstanceIds=[iid])
        ctx.state.set(self.state_key, None)
        return [f"terminated {iid}"]


def publish_host_key(ctx, record):
    """Put a recorded host key into the facts the host half reads."""
    ctx.facts["host_fingerprints"] = sorted(record["fingerprints"].values())
    ctx.facts["host_keys"] = record.get("keys", [])


class HostKeyStep(AWSStep):
    """The new server's SSH host key fingerprints, read from the console output where
    cloud-init prints them at first boot, so the first SSH connection is verified.

    Facts for the host half: ``host_fingerprints`` (["SHA256:...", ...], one a key type)
    and ``host_keys`` (the public keys whose fingerprints matched, when printed). The
    state file keeps the key type of each fingerprint.
    """

    name = "SSH host key"
    state_key = "host_key"
    # cloud-init prints the keys a minute or two after boot; AWS publishes the console
    # output some minutes later.
    console_timeout = 900
    console_delay = 15
    waiting_for = None  # the instance whose console output the run was told it waits for
    timeout_hint = (
        "AWS publishes the console output some minutes after boot: run the command again "
        "(the instance is kept and the next run reads the key), or add --skip-host to finish "
        "the AWS half now and read the key next time. Or read the fingerprint in the EC2 "
        "console (Actions, Monitor and troubleshoot, Get system log) and pass it with "
        "--trust-host-key, which skips this wait.")

    def read(self, ctx):
        record = self.record(ctx)
        instance_id = ctx.facts.get("instance_id")
        if instance_id and record.get("instance_id") == instance_id:
            publish_host_key(ctx, record)
            return record
        return None

    def plan(self, ctx, current):
        if current:
            return Change(KEEP, *(f"{kind} {fp}" for kind, fp in
                                  sorted(current["fingerprints"].items())))
        if ctx.options.get("trust_host_key"):
            return Change(KEEP, "the host key is the one --trust-host-key names: the console "
                                "output is not awaited")
        source = "read the fingerprints from the instance's console output"
        if ctx.options.get("skip_host"):
            source += " if AWS has published it (--skip-host: no waiting)"
        if ctx.facts.get("instance_id") and not ctx.facts.get("instance_created"):
            return Change(ADOPT, source)
        return Change(CREATE, source)

    def apply(self, ctx, current, change):
        iid = ctx.facts["instance_id"]
        if ctx.options.get("skip_host"):
            found = self._read_console(ctx, iid)
            if not found:
                note(ctx, f"The SSH host key of {iid} is not in its console output yet (AWS "
                          "publishes it some minutes after boot): the next run reads it "
                          "before it connects to the server.")
                return DEFERRED
        else:
            found = poll(lambda: self._read_console(ctx, iid) or self._waiting(ctx, iid),
                         f"read the SSH host key of {iid} from its console output",
                         self.console_timeout, self.console_delay, self.timeout_hint)
        fingerprints, keys = found
        self.save_record(ctx, instance_id=iid, fingerprints=fingerprints, keys=keys)
        publish_host_key(ctx, self.record(ctx))
        for kind, fp in sorted(fingerprints.items()):
            ctx.detail(f"{kind} {fp}")
        return ADOPTED if change.action == ADOPT else CREATED

    def _read_console(self, ctx, iid):
        """(fingerprints, public keys) from the console output, or None when no complete
        fingerprint block is there yet."""
        output = call(f"read the console output of {iid}",
                      ctx.aws.client("ec2").get_console_output, InstanceId=iid).get("Output")
        fingerprints, keys = parse_host_keys(output)
        return (fingerprints, keys) if fingerprints else None

    def _waiting(self, ctx, iid):
        """Say once, at normal verbosity, what the run waits for and for how long at most;
        the step's heartbeat then says for how long so far."""
        if self.waiting_for != iid:
            self.waiting_for = iid
            limit = duration(self.console_timeout)
            ctx.say(f"Waiting for the console output of {iid} to show its SSH host keys "
                    f"(AWS publishes it some minutes after boot; at most {limit}).")
            ctx.progress(f"waiting for the console output of {iid} (at most {limit})")
        return None

    def destroy(self, ctx, current):
        ctx.state.set(self.state_key, None)
        return []
