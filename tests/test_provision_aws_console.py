"""Reading SSH host keys from an EC2 console log, on the text cloud-init really prints.

The keys are real (made by ssh-keygen) and the expected fingerprints are what
``ssh-keygen -lf`` says, so the parser is checked against OpenSSH itself. The logs are
laid out as the consoles of the supported images show them: syslog-prefixed lines from
``logger -t ec2`` or ``cloud-init``, kernel time stamps, CRLF line ends, and other boot
messages interleaved.
"""

import subprocess

import pytest

from helios_aws.aws.console import parse_host_keys

HOST = "root@ip-10-0-0-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    made = {}
    for kind, option in (("ECDSA", "ecdsa"), ("ED25519", "ed25519"), ("RSA", "rsa")):
        path = directory / f"ssh_host_{option}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", option, "-N", "", "-C", HOST, "-f", str(path)],
                       check=True)
        bits, fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True,
                                           capture_output=True, text=True).stdout.split()[:2]
        made[kind] = {"bits": bits, "fingerprint": fingerprint,
                      "public": path.with_suffix(".pub").read_text().strip()}
    return made


def fingerprint_block(keys, prefix, kinds):
    return ([f"{prefix}#############################################################",
             f"{prefix}-----BEGIN SSH HOST KEY FINGERPRINTS-----"]
            + [f"{prefix}{keys[k]['bits']} {keys[k]['fingerprint']} {HOST} ({k})" for k in kinds]
            + [f"{prefix}-----END SSH HOST KEY FINGERPRINTS-----",
               f"{prefix}#############################################################"])


def key_block(keys, kinds):
    return (["-----BEGIN SSH HOST KEY KEYS-----"] + [keys[k]["public"] for k in kinds]
            + ["-----END SSH HOST KEY KEYS-----"])


def expected(keys, kinds):
    return {k: keys[k]["fingerprint"] for k in kinds}


def test_debian_13_console_with_syslog_prefixed_ec2_lines(keys):
    kinds = ("ECDSA", "ED25519", "RSA")
    text = "\r\n".join([
        "[    3.912001] systemd[1]: Reached target cloud-config.target - Cloud-config availability.",
        "[    5.277309] cloud-init[612]: Cloud-init v. 24.1.3 running 'modules:config' at Wed, "
        "25 Nov 2026 12:40:03 +0000. Up 5.20 seconds.",
        "<14>Nov 25 12:40:05 ec2: ",
        *fingerprint_block(keys, "<14>Nov 25 12:40:05 ec2: ", kinds),
        *key_block(keys, kinds),
        "[    6.101223] cloud-init[640]: Cloud-init v. 24.1.3 finished at Wed, 25 Nov 2026 "
        "12:40:05 +0000. Datasource DataSourceEc2Local.  Up 6.09 seconds",
        "",
        "Debian GNU/Linux 13 ip-10-0-0-1 ttyS0",
        "ip-10-0-0-1 login: ",
    ])

    fingerprints, public = parse_host_keys(text)

    assert fingerprints == expected(keys, kinds)
    assert sorted(public) == sorted(" ".join(keys[k]["public"].split()[:2]) for k in kinds)


def test_amazon_linux_2023_console_ignores_ssh_keygen_chatter(keys):
    kinds = ("ECDSA", "ED25519")
    text = "\n".join([
        "[    8.124001] cloud-init[1583]: Generating public/private ed25519 key pair.",
        "[    8.124010] cloud-init[1583]: The key fingerprint is:",
        # Printed while the key is made, before the block: not a host key statement.
        f"[    8.124020] cloud-init[1583]: {keys['RSA']['fingerprint']} {HOST}",
        "[    8.124040] cloud-init[1583]: +--[ED25519 256]--+",
        *fingerprint_block(keys, "<14>Nov 25 12:40:05 cloud-init: ", kinds),
        *key_block(keys, kinds),
    ])

    assert parse_host_keys(text)[0] == expected(keys, kinds)


def test_plain_ec2_prefix_with_boot_messages_inside_the_block(keys):
    lines = fingerprint_block(keys, "ec2: ", ("ECDSA", "ED25519"))
    lines.insert(3, "[   12.345678] random: crng init done")

    assert parse_host_keys("\r\n".join(lines))[0] == expected(keys, ("ECDSA", "ED25519"))


def test_a_block_still_being_written_counts_as_nothing_yet(keys):
    lines = fingerprint_block(keys, "ec2: ", ("ECDSA", "ED25519"))[:-2]

    assert parse_host_keys("\n".join(lines)) == ({}, [])
    assert parse_host_keys("") == ({}, [])
    assert parse_host_keys(None) == ({}, [])


def test_after_a_reboot_the_last_block_wins(keys):
    first = fingerprint_block(keys, "ec2: ", ("RSA",))
    second = fingerprint_block(keys, "ec2: ", ("ED25519",))

    assert parse_host_keys("\n".join(first + ["[    0.000000] Linux version 6.12"] + second))[0] == (
        expected(keys, ("ED25519",)))


def test_a_public_key_without_its_fingerprint_in_the_block_is_dropped(keys):
    text = "\n".join(fingerprint_block(keys, "ec2: ", ("ED25519",))
                     + key_block(keys, ("ED25519", "RSA")))

    fingerprints, public = parse_host_keys(text)

    assert fingerprints == expected(keys, ("ED25519",))
    assert public == [" ".join(keys["ED25519"]["public"].split()[:2])]
