"""The SSH host keys a new instance prints on its serial console, as cloud-init writes them.

On first boot cloud-init's ``keys_to_console`` module logs a fingerprint block through
``logger -t ec2``, so each line may carry a syslog prefix (``<14>Nov 25 12:35:01 ec2: ``),
plain ``ec2: `` or a kernel time stamp, and other boot messages can interleave::

    ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
    ec2: 256 SHA256:... root@ip-10-0-0-1 (ED25519)
    ec2: -----END SSH HOST KEY FINGERPRINTS-----
    -----BEGIN SSH HOST KEY KEYS-----
    ssh-ed25519 AAAA... root@ip-10-0-0-1
    -----END SSH HOST KEY KEYS-----

Only complete blocks count (the output may be read while cloud-init is still writing),
and the last one wins (a reboot prints them again).
"""

import base64
import binascii
import hashlib
import re

FINGERPRINTS_BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
FINGERPRINTS_END = "-----END SSH HOST KEY FINGERPRINTS-----"
KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"

FINGERPRINT_RE = re.compile(
    r"(?:^|\s)\d+ (SHA256:[A-Za-z0-9+/]{43}) .*\(([A-Z0-9-]+)\)\s*$")
PUBLIC_KEY_RE = re.compile(
    r"(?:^|\s)((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/]+={0,2})(?:\s|$)")
TRUSTED_FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?\Z")


def _last_block(lines, begin, end):
    block, inside, last = [], False, None
    for line in lines:
        if begin in line:
            block, inside = [], True
        elif end in line and inside:
            last, inside = block, False
        elif inside:
            block.append(line)
    return last


def fingerprint(public_key):
    """OpenSSH's SHA256 fingerprint of ``"TYPE BASE64 [comment]"``."""
    blob = base64.b64decode(public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def parse_host_keys(text):
    """``({key type: "SHA256:..."}, [public keys])`` from console output; ``({}, [])``
    when no complete fingerprint block has been printed yet.

    Public keys are returned only when their fingerprint is in the fingerprint block.
    """
    lines = (text or "").replace("\r", "").splitlines()
    block = _last_block(lines, FINGERPRINTS_BEGIN, FINGERPRINTS_END)
    fingerprints = {}
    for line in block or ():
        match = FINGERPRINT_RE.search(line)
        if match:
            fingerprints[match.group(2)] = match.group(1)
    keys = []
    for line in _last_block(lines, KEYS_BEGIN, KEYS_END) or ():
        match = PUBLIC_KEY_RE.search(line)
        if not match:
            continue
        try:
            if fingerprint(match.group(1)) in fingerprints.values():
                keys.append(match.group(1))
        except (binascii.Error, ValueError):
            continue
    return fingerprints, keys
