"""No secret in any output or log of the whole test session; every file holding one is 0600.

This module runs last (pytest takes test files in name order). It collects the secrets of
every deployment the session made (the generated SECRET_KEY and EMAIL_OPTOUT_SECRET, the
Google client secret, the SES secret access key, SSH private keys; an access key's
id is an identifier, which AWS itself logs) and looks for each, by its real
value, in everything the commands printed and in every file the deployments hold.
"""

import stat
from pathlib import Path

import pytest

from fixtures import CAPTURED_OUTPUT
from helios_aws import envfile
from helios_aws.errors import ConfigError

# Files that exist to hold secrets; anything else must not contain one.
SECRET_FILES = {".env", "ssh-key.pem"}


def deployments(base):
    return sorted({p.parent for p in Path(base).rglob("deployment.json")})


def env_values(path):
    """The .env's values; a file some test broke on purpose is read line by line."""
    text = path.read_text(errors="replace") if path.exists() else ""
    try:
        return envfile.parse(text)
    except ConfigError:
        pairs = (line.partition("=") for line in text.splitlines())
        return {key.strip(): value.strip().strip("'\"") for key, sep, value in pairs if sep}


def secrets_of(deploy):
    env = env_values(deploy / ".env")
    found = {env[k] for k in envfile.SECRET_KEYS if env.get(k)}
    key = deploy / "ssh-key.pem"
    # Some tests put a stand-in there (a key file that must not be overwritten).
    if key.exists() and key.read_text().startswith("-----BEGIN"):
        found |= {line for line in key.read_text().splitlines()
                  if line and not line.startswith("-----")}
    return found


def test_no_secret_in_any_output_or_log_and_secret_files_are_private(tmp_path_factory):
    if not CAPTURED_OUTPUT:
        pytest.skip("nothing was run in this session: run it with the rest of the suite")
    base = tmp_path_factory.getbasetemp()
    dirs = deployments(base)
    assert dirs, "the session made no deployment to scan"
    secrets = set()
    for deploy in dirs:
        secrets |= secrets_of(deploy)
    secrets = {s for s in secrets if len(s) >= 8}
    assert secrets

    leaks = []
    for index, text in enumerate(CAPTURED_OUTPUT):
        leaks += [f"command output #{index}" for s in secrets if s in text]
    for deploy in dirs:
        for path in deploy.rglob("*"):
            if not path.is_file():
                continue
            content = path.read_text(errors="replace")
            holds = any(s in content for s in secrets)
            if holds and path.name not in SECRET_FILES:
                leaks.append(str(path))
            if holds:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert leaks == []
