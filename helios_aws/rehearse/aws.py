"""The local AWS: moto in server mode, in a thread of this process, over real HTTP.

moto serves one fixed console output for every instance and knows Amazon Linux's public
image parameters but not Debian's; the helpers below fill those in, in-process.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Sequence

from .processes import LOOPBACK, StandInError


def moto_request(url: str, method: str, path: str) -> bytes:
    """One plain HTTP request to the moto server at url (for its /moto-api/)."""
    parsed = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status >= 400:
        raise StandInError(f"moto {method} {path}: HTTP {response.status}: {body[:500]!r}")
    return body


def moto_reset(url: str) -> None:
    """Forget every AWS resource the moto server at url holds."""
    moto_request(url, "POST", "/moto-api/reset")


def moto_data(url: str) -> dict:
    """Everything the moto server at url holds, e.g. ["ses"]["RawMessage"] for sent mail
    (this breaks once an RDS instance exists: reset first)."""
    return json.loads(moto_request(url, "GET", "/moto-api/data.json"))


class MotoServer:
    """moto in server mode, in a thread of this process, over real HTTP on loopback."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


def cloud_init_console(public_keys: Sequence[str],
                       host: str = "root@ip-172-31-22-10.ec2.internal") -> str:
    """The end of an EC2 serial console log as cloud-init writes it on first boot: the
    fingerprint block of the given host public keys ("ssh-ed25519 AAAA... comment"), then
    the keys themselves."""
    prefix = "<14>Nov 25 12:40:05 cloud-init:"
    lines = [
        "[    6.912345] cloud-init[1583]: Cloud-init v. 22.2.2 running 'init' at Wed, "
        "25 Nov 2026 12:40:02 +0000. Up 6.88 seconds.",
        "[    8.124010] cloud-init[1583]: Generating public/private ed25519 key pair.",
        f"{prefix} #############################################################",
        f"{prefix} -----BEGIN SSH HOST KEY FINGERPRINTS-----",
    ]
    for public in public_keys:
        bits, fingerprint, kind = ssh_keygen_fingerprint(public)
        lines.append(f"{prefix} {bits} {fingerprint} {host} ({kind})")
    lines += [
        f"{prefix} -----END SSH HOST KEY FINGERPRINTS-----",
        f"{prefix} #############################################################",
        "-----BEGIN SSH HOST KEY KEYS-----",
        *(" ".join(public.split()[:2]) + f" {host}" for public in public_keys),
        "-----END SSH HOST KEY KEYS-----",
        "[   10.503211] cloud-init[1702]: Cloud-init v. 22.2.2 finished at Wed, 25 Nov 2026 "
        "12:40:07 +0000. Datasource DataSourceEc2.  Up 10.49 seconds",
    ]
    return "\r\n".join(lines) + "\r\n"


def ssh_keygen_fingerprint(public_key: str) -> tuple[str, str, str]:
    """(bits, "SHA256:...", type such as "ED25519") as `ssh-keygen -lf` prints them."""
    listed = subprocess.run(["ssh-keygen", "-lf", "-"], input=public_key, text=True,
                            capture_output=True, check=True).stdout.split()
    return listed[0], listed[1], listed[-1].strip("()")


def serve_console_output(text: str) -> None:
    """Make the in-process moto server answer GetConsoleOutput with text (moto serves
    one fixed text for every instance)."""
    import moto.ec2.responses.general as console

    console.SAMPLE_CONSOLE_OUTPUT = text


def publish_public_parameter(name: str, value: str, region: str = "us-east-1",
                             account: str = "123456789012") -> None:
    """Add an AWS public SSM parameter (under /aws/service/, which the API refuses to
    create) to the in-process moto server: moto ships Amazon Linux's AMI parameters
    but not Debian's."""
    import datetime

    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[account][region]._parameters[name].append(Parameter(
        account_id=account, name=name, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None,
        last_modified_date=datetime.datetime.now(datetime.timezone.utc), version=1,
        data_type="aws:ec2:image"))


# Debian 13's public image parameters (the default OS), and the Amazon Linux ones moto
# ships for the same architecture.
DEBIAN_13_IMAGES = {
    "/aws/service/debian/release/13/latest/amd64":
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "/aws/service/debian/release/13/latest/arm64":
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}


def publish_debian_images(url: str, regions: Sequence[str] = ("us-east-1", "us-west-2")) -> None:
    """Publish Debian 13's image parameters in the in-process moto server at url, each
    pointing at an image moto knows (its Amazon Linux image of the same architecture)."""
    import boto3

    for region in regions:
        ssm = boto3.client("ssm", endpoint_url=url, region_name=region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for debian, amazon in DEBIAN_13_IMAGES.items():
            image = ssm.get_parameter(Name=amazon)["Parameter"]["Value"]
            publish_public_parameter(debian, image, region=region)


class AddressEcho:
    """A stand-in for AWS's address echo (https://checkip.amazonaws.com): answers every
    GET with ``address`` and a line break, over HTTP on loopback. The commands find it
    through HELIOS_AWS_ADDRESS_ECHO_URL (``url``) and open port 22 to that address."""

    def __init__(self, address: str = LOOPBACK):
        import http.server
        import threading

        body = f"{address}\n".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
