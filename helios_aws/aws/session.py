"""The one place boto3 clients are built, and where botocore errors become ours.

The standard credential chain applies (environment, ``AWS_PROFILE``, shared files, SSO,
instance roles); ``--profile`` and ``--region`` override it. ``AWS_ENDPOINT_URL`` (and the
per-service ``AWS_ENDPOINT_URL_<SERVICE>``) is honoured by botocore itself, which is how
the tests and the local rehearsal reach a local AWS. Retries use botocore's standard mode.

A run reads each resource once: :meth:`AWS.cached` keeps what a read returned, so the
checks made before anything is changed and the steps that follow share one call; a step
that changes a resource drops what it read with :meth:`AWS.forget`.
"""

import contextlib
import logging
import threading

import functools

import boto3
import botocore.exceptions
import botocore.loaders
from botocore.config import Config

from ..errors import AWSError, StepTimeout

CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=10,
    read_timeout=60,
    user_agent_extra="helios-aws",
)
TAG_KEY = "helios-aws:deployment"

NO_CREDENTIALS_HINT = (
    "Configure AWS credentials: `aws configure` (or `aws sso login`), set AWS_PROFILE or "
    "pass --profile, or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
)


def quiet_aws_libraries():
    """Keep botocore's INFO chatter ("Found credentials in ...") out of the commands'
    output: Helios configures the root logger at INFO. A level set on purpose is kept."""
    for name in ("botocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@functools.cache
def _model_loader():
    """botocore's reader of service models, shared by every session of this process.

    A client's first creation parses its service's model (EC2's alone takes a few hundred
    milliseconds of CPU), and botocore keeps what it parsed in the loader of the session
    that asked. Each run builds a new session, so without this every run in a process (the
    probes of aws_check, a test suite, a rehearsal) parsed every model again, under the
    interpreter lock, one probe after another. The models are read-only data.
    """
    return botocore.loaders.create_loader()


class AWS:
    """A boto3 session and its clients, built once per run."""

    def __init__(self, region, profile=None):
        quiet_aws_libraries()
        self.region = region
        self.profile = profile
        try:
            self.session = boto3.Session(profile_name=profile or None, region_name=region)
        except botocore.exceptions.ProfileNotFound:
            raise AWSError(f"The AWS profile {profile!r} does not exist.",
                           "Check `aws configure list-profiles`, or drop --profile.")
        if not self.session._session.get_config_variable("data_path"):
            self.session._session.register_component("data_loader", _model_loader())
        self._clients = {}
        self._lock = threading.Lock()
        self._cache = {}

    def client(self, service, region=None):
        """The run's one client of ``service``. Threads (aws_check's probes) share it: a
        boto3 session is not safe to use from several threads at once, and each client
        built costs 5-30 ms of CPU under the interpreter lock, so probes that each built
        their own (six EC2 clients in one aws_check) ran one after another."""
        key = (service, region or self.region)
        client = self._clients.get(key)  # a client built already is never waited for
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = self.session.client(
                        service, region_name=region or self.region, config=CONFIG)
        return client

    def observe(self, callback):
        """Call ``callback(service, operation, params)`` once for every API call of this
        run (retries included in the one call), with the call's own parameters."""

        def before_parameter_build(model, params, **kwargs):
            callback(model.service_model.service_name, model.name, params)

        self.session.events.register("before-parameter-build", before_parameter_build)

    def cached(self, key, fetch):
        """What ``fetch()`` returns, called once per run for ``key``."""
        if key not in self._cache:
            self._cache[key] = fetch()
        return self._cache[key]

    def forget(self, *keys):
        """Drop cached reads of a resource that was just changed."""
        for key in keys:
            self._cache.pop(key, None)

    def tags(self, deployment_name, name=None):
        tags = [{"Key": TAG_KEY, "Value": deployment_name}]
        if name:
            tags.append({"Key": "Name", "Value": name})
        return tags


def error_code(exc):
    return exc.response.get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""


@contextlib.contextmanager
def translate(action, hints=None):
    """Re-raise botocore errors met while doing ``action`` as AWSError with a hint.

    ``hints`` maps AWS error codes to hints specific to the call.
    """
    try:
        yield
    except (botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError):
        raise AWSError(f"No AWS credentials were found while trying to {action}.",
                       NO_CREDENTIALS_HINT)
    except botocore.exceptions.ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", str(exc))
        hint = (hints or {}).get(code)
        if hint is None and code in ("InvalidClientTokenId", "UnrecognizedClientException",
                                     "AuthFailure", "ExpiredToken", "SignatureDoesNotMatch"):
            hint = NO_CREDENTIALS_HINT
        if hint is None and code in ("AccessDenied", "AccessDeniedException",
                                     "UnauthorizedOperation"):
            hint = "Give the AWS identity permission for this action, or use another profile."
        raise AWSError(f"AWS refused to {action}: {code}: {message}",
                       hint or "See the message above; fix it and run the command again.")
    except botocore.exceptions.EndpointConnectionError as exc:
        raise AWSError(f"Could not reach AWS to {action}: {exc}.",
                       "Check the network and --region (or AWS_ENDPOINT_URL).")
    except botocore.exceptions.WaiterError as exc:
        raise AWSError(f"Gave up waiting to {action}: {exc}.",
                       "Look at the resource in the AWS console; run again to resume.")
    except botocore.exceptions.BotoCoreError as exc:
        raise AWSError(f"AWS client error while trying to {action}: {exc}.",
                       "Check the AWS configuration and run the command again.")


def call(action, operation, missing=(), hints=None, **kwargs):
    """``operation(**kwargs)`` with errors translated; ``None`` when AWS answers with one
    of the error codes in ``missing`` (the "no such thing" answers of a read)."""
    with translate(action, hints):
        try:
            return operation(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in missing:
                return None
            raise


def wait(waiter, action, max_seconds, delay=5, **kwargs):
    """Run a botocore waiter bounded to about ``max_seconds``, with a clear timeout message."""
    attempts = max(1, int(max_seconds // delay))
    try:
        waiter.wait(WaiterConfig={"Delay": delay, "MaxAttempts": attempts}, **kwargs)
    except botocore.exceptions.WaiterError as exc:
        if "Max attempts exceeded" in str(exc):
            raise StepTimeout(f"Timed out after {max_seconds}s waiting to {action}.",
                              "AWS may be slow; run the command again to resume waiting.")
        raise AWSError(f"Waiting to {action} failed: {exc}.",
                       "Look at the resource in the AWS console; run again to resume.")
