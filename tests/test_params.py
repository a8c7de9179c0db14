"""Paths, names and numbers that reach units, nginx sites and root's shell.

Every value is checked whole (a trailing newline never passes), paths are compared
normalised, and each refusal says what would have been meant.
"""

import re

import pytest
from hypothesis import given, settings, strategies as st

from helios_aws import params
from helios_aws.errors import ConfigError
from helios_aws.host import release

GOOD = {"domain": "vote.example.org", "email": "elections@example.org"}


def build(**values):
    return params.build([GOOD, values])


# (parameter values, what the refusal says)
REFUSED = [
    ({"app_dir": "/"}, "is the root directory"),
    ({"app_dir": "/usr"}, "system directory /usr"),
    ({"app_dir": "/etc"}, "system directory /etc"),
    ({"app_dir": "/var"}, "system directory /var"),
    ({"app_dir": "/var/lib"}, "system directory /var/lib"),
    ({"app_dir": "/var/lib/helios"}, "overlaps /var/lib/helios, where helios-aws keeps"),
    ({"app_dir": "/var/cache/helios-aws/app"}, "overlaps /var/cache/helios-aws"),
    ({"app_dir": "/lib64"}, "system directory /lib64"),
    ({"app_dir": "/boot"}, "system directory /boot"),
    ({"app_dir": "/srv"}, "system directory /srv"),
    ({"app_dir": "/home"}, "system directory /home"),
    ({"app_dir": "/home/alice"}, "is a home directory"),
    ({"app_dir": "/root"}, "system directory /root"),
    ({"app_dir": "/root/helios"}, "is inside /root"),
    ({"app_dir": "/tmp/helios"}, "is inside /tmp"),
    ({"app_dir": "/var/tmp/helios"}, "is inside /var/tmp"),
    ({"app_dir": "/dev/shm/helios"}, "is inside /dev"),
    ({"app_dir": "/run/helios"}, "is inside /run"),
    ({"app_dir": "/proc/1"}, "is inside /proc"),
    ({"app_dir": "/etc/helios"}, "is inside /etc"),
    ({"app_dir": "/usr/../etc"}, "not a normalised path"),
    ({"app_dir": "/srv/./helios"}, "Did you mean /srv/helios?"),
    ({"app_dir": "//srv/helios"}, "not a normalised path"),
    ({"app_dir": "/srv//helios"}, "not a normalised path"),
    ({"app_dir": "srv/helios"}, "must be an absolute path"),
    ({"app_dir": "/srv/hel ios"}, "treat specially"),
    ({"app_dir": "/srv/helios%i"}, "treat specially"),
    ({"app_dir": "/srv/helios;"}, "treat specially"),
    ({"app_dir": "/srv/$HOME"}, "treat specially"),
    ({"app_dir": "/srv/'helios'"}, "treat specially"),
    ({"app_dir": "/srv/helios\\x"}, "treat specially"),
    ({"app_dir": "/srv/helios{}"}, "treat specially"),
    ({"app_dir": "/srv/helios\n"}, "treat specially"),
    ({"app_dir": "/srv/hélios"}, "treat specially"),
    ({"host_prefix": "/"}, "is the root directory"),
    ({"host_prefix": "/usr"}, "system directory /usr"),
    ({"host_prefix": "relative/dir"}, "must be an absolute path"),
    ({"host_prefix": "/tmp/x/../.."}, "not a normalised path"),
    ({"host_prefix": "/tmp/a b"}, "treat specially"),
    ({"ssh_cidr": "203.0.113.7/24"}, "Did you mean 203.0.113.0/24?"),
    ({"ssh_cidr": "2001:db8::1/64"}, "Did you mean 2001:db8::/64?"),
    ({"ssh_cidr": "203.0.113.7/32\n"}, "is not an IP network"),
    ({"http_port": 8443, "https_port": 8443}, "are both 8443"),
    ({"http_port": 0}, "TCP port"),
    ({"https_port": 65536}, "TCP port"),
    ({"name": "helios\n"}, "not a valid deployment name"),
    ({"domain": "vote.example.org\n"}, "not a valid host name"),
    ({"instance_type": "t3.small\n"}, "not an instance type name"),
    ({"service_user": "helios\n"}, "not a valid user name"),
    ({"ssh_user": "admin\n"}, "not a valid user name"),
    ({"from_name": "Votes\x85DEBUG=1"}, "U+0085"),
    ({"from_name": "Votes\u2028DEBUG=1"}, "U+2028"),
    ({"google_client_id": "id\vDEBUG=1"}, "U+000B"),
    ({"from_name": "Elections, Inc"}, "does not survive in the mail header"),
    ({"from_name": "say \"hi\""}, "reads as 'say hi'"),
    ({"from_name": "back\\slash"}, "does not survive in the mail header"),
    ({"from_name": "Votes <admin@evil.example>"}, "does not survive in the mail header"),
    ({"from_name": "(c) Org"}, "reads as 'Org'"),
    # Helios's development switches: its autologin opens on a URL containing these.
    ({"domain": "localhost.example.org"}, "contains 'localhost'"),
    ({"domain": "vote.mylocalhost.net"}, "contains 'localhost'"),
    ({"domain": "127.0.0.1.nip.io"}, "contains '127.0.0.1'"),
    # A value of another type is never read as this one.
    ({"ssh_cidr": True}, "ssh_cidr must be a string, not true"),
    ({"volume_size": True}, "volume_size must be an integer, not true"),
    ({"http_port": "80"}, "http_port must be an integer, not a string '80'"),
    ({"backup_days": 3.5}, "backup_days must be an integer, not a number 3.5"),
    ({"ldap_start_tls": "yes"}, "ldap_start_tls must be true or false"),
    ({"domain": ["vote.example.org"]}, "domain must be a string, not a list"),
]


@pytest.mark.parametrize("values,message", REFUSED, ids=[repr(v)[:50] for v, _ in REFUSED])
def test_refused_with_what_it_means(values, message):
    with pytest.raises(ConfigError) as refused:
        build(**values)
    assert message in str(refused.value)
    assert refused.value.hint


@pytest.mark.parametrize("values", [
    {"app_dir": "/srv/helios"}, {"app_dir": "/opt/helios"}, {"app_dir": "/var/lib/helios-app"},
    {"app_dir": "/srv/helios/"}, {"app_dir": "/home/alice/helios"},
    {"app_dir": "/usr/local/helios"}, {"host_prefix": "/tmp/pytest-of-root/rehearsal_0"},
    {"ssh_cidr": "203.0.113.7/32"}, {"ssh_cidr": "203.0.113.7"},
    {"ssh_cidr": "2001:db8::/64"}, {"http_port": 8080, "https_port": 8443},
    {"from_name": "O'Brien & Co $HOME #1 50%i Renée"},
])
def test_accepted(values):
    build(**values)


SAFE_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")


@settings(max_examples=300, deadline=None)
@given(path=st.text(alphabet=st.sampled_from("/abc._- %$;'\"\\\n{}"), max_size=20))
def test_an_accepted_app_dir_is_normalised_and_safe_in_units_nginx_and_shell(path):
    try:
        deployment = build(app_dir=path)
    except ConfigError:
        return
    normal = deployment.app_dir.rstrip("/")
    assert SAFE_PATH.fullmatch(normal)
    assert not {".", ".."} & set(normal.split("/"))


def test_git_url_credentials_leave_the_url_and_travel_in_a_header():
    url, config = release.split_credentials("https://deploy:s3cr%40t-t0ken@git.example.org/h.git")
    assert url == "https://git.example.org/h.git"
    assert "s3cr" not in config and "Authorization: Basic " in config
    import base64

    assert base64.b64decode(config.split()[-1]) == b"deploy:s3cr@t-t0ken"
    masked = release.url_secrets("https://deploy:s3cr%40t-t0ken@git.example.org/h.git")
    assert "s3cr%40t-t0ken" in masked and "s3cr@t-t0ken" in masked
    assert release.split_credentials("https://git.example.org/h.git") == (
        "https://git.example.org/h.git", None)
    assert release.split_credentials("git@github.com:h/h.git")[1] is None


# Options whose value would be silently reinterpreted or ignored: (options, refusal).
OPTIONS_REFUSED = [
    ({"delete_backups": "helios"}, "--delete-backups means something only with --destroy"),
    ({"no_backup": True}, "--no-backup means something only with --destroy"),
    ({"no_snapshot": True}, "--no-snapshot means something only with --destroy"),
    ({"git_url": "https://example.org/h.git", "skip_host": True},
     "--git-url is for the server's software"),
    ({"ca_bundle": "/tmp/ca.pem", "skip_host": True}, "--ca-bundle is for the server's"),
    ({"ssh_port": 0}, "--ssh-port 0 is not a TCP port"),
]


@pytest.mark.parametrize("options,message", OPTIONS_REFUSED,
                         ids=[m[:40] for _, m in OPTIONS_REFUSED])
def test_an_option_that_would_be_ignored_or_reinterpreted_is_refused(options, message):
    from helios_aws import provision

    with pytest.raises(ConfigError) as refused:
        provision.check_options(build(), options)
    assert message in refused.value.message and refused.value.hint


@pytest.mark.parametrize("text", ["0", "-1", "65536", "22x", ""])
def test_ssh_port_zero_or_out_of_range_is_refused_by_every_command(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=f"--ssh-port {text!r} is not a TCP "
                                                          "port: give 1-65535"):
        params.tcp_port("--ssh-port")(text)
    assert params.tcp_port("--ssh-port")("2222") == 2222


@pytest.mark.parametrize("url", [
    "https://deploy:pa/ss-Zq8@git.example.org/helios.git",
    "https://deploy:pa?ss-Zq8@git.example.org/helios.git",
    "https://deploy:pa#ss-Zq8@git.example.org/helios.git",
    "https://deploy:pa@ss-Zq8@git.example.org:99999/helios.git",
    "ftp://deploy:pass-Zq8@git.example.org/helios.git",
])
def test_a_refused_git_url_never_shows_its_password(url):
    with pytest.raises(ConfigError) as refused:
        params.validate_git_url(url)
    assert "Zq8" not in str(refused.value)
    assert "***@git.example.org" in refused.value.message
