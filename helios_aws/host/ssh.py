"""The one SSH connection of a run: verified host key, persistent remote shells, SFTP.

* The server's host key is checked before authenticating, against pinned fingerprints
  (the AWS half reads them from the instance's console output, or the user gives
  ``--trust-host-key SHA256:...``) or, when nothing is pinned, against ``known_hosts``.
  An unknown or changed key is refused; nothing is ever added silently.
* ``~/.ssh/config`` is honoured (HostName, User, Port, IdentityFile, UserKnownHostsFile)
  and so is an ssh-agent; explicit arguments win over the config.
* Commands run in a persistent remote shell (one for the login user, one under
  ``sudo -n`` for root, each opened on first use), so a command costs a few milliseconds
  instead of a new channel. ``channels_opened`` counts the channels of the connection.
* A failing command raises :class:`~helios_aws.errors.HostError` naming the step, the
  command (with secrets redacted), the exit status and the last lines of its output;
  paramiko and socket errors become ``HostError`` with a hint.
"""

import base64
import hashlib
import io
import logging
import os
import re
import secrets
import select
import shlex
import socket
import tarfile
import time
from pathlib import Path

import paramiko

from ..errors import HostError, HostTimeout

DEFAULT_TIMEOUT = 1800
ENDED, TIMED_OUT = "ended", "timed out"  # how reading a remote shell can stop
STAGING_PARENT = "/tmp"
STAGING_RE = re.compile(re.escape(STAGING_PARENT) + r"/helios-aws\.[A-Za-z0-9]{8}")
# The host's deployment lock: how long a run waits for it, the descriptor the root shell
# holds it on, what the shell says, and its exit statuses when it cannot take it.
LOCK_WAIT = 1800
LOCK_FD = 9
LOCK_TAKEN = "helios-aws: deployment lock taken"
LOCK_BUSY = "helios-aws: deployment lock busy"
LOCK_HOLDER = "helios-aws: deployment lock held by "
LOCK_NO_FILE, LOCK_TIMED_OUT, LOCK_NO_FLOCK = 74, 75, 76
CONNECT_TIMEOUT = 15
TAIL_LINES = 20
SUDO_HINT = ("The SSH user must be allowed to run commands as root without a password "
             "(sudo -n), as the cloud images' default users are: e.g. a line "
             "`USER ALL=(ALL) NOPASSWD:ALL` in /etc/sudoers.d/.")


def fingerprint(key):
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def normalise_fingerprint(text):
    """``SHA256:...`` as OpenSSH prints it; raises HostError for anything else."""
    value = text.strip()
    if not value.startswith("SHA256:") or len(value) != 50:
        raise HostError(
            f"{value!r} is not an OpenSSH SHA256 host key fingerprint.",
            "Give it as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the "
            "server, e.g. SHA256:gbP8kbUm10kpXxTB43FekViDRfvIBSe9MGDDVFTSkKY.",
        )
    return value.rstrip("=")


def known_hosts_name(host, port):
    return host if port == 22 else f"[{host}]:{port}"


# paramiko reports every connection at INFO, and its transport thread logs at ERROR what
# the caller also gets as an exception (a connection reset while reading the banner, say,
# after Ctrl-C): the run's own log and its HostError say what matters, once.
if logging.getLogger("paramiko").level == logging.NOTSET:
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class Result:
    """What a remote command did: ``status``, ``stdout``, ``stderr`` (text)."""

    def __init__(self, command, status, stdout, stderr):
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr

    @property
    def ok(self):
        return self.status == 0

    def __repr__(self):
        return f"Result(status={self.status!r}, stdout={self.stdout[-200:]!r})"


class HostKeyCheck(paramiko.MissingHostKeyPolicy):
    """Decides about the server's key before any credential is sent.

    paramiko consults this policy for every key because the client itself holds none:
    the pinned fingerprints, when there are any, are the only truth; otherwise the
    known_hosts files are.
    """

    def __init__(self, pinned=(), known_hosts=()):
        self.pinned = {normalise_fingerprint(f) for f in pinned if f}
        self.known_hosts = [Path(p).expanduser() for p in known_hosts]
        self.accepted = None

    def _known(self, name):
        found = []
        for path in self.known_hosts:
            if not path.is_file():
                continue
            try:
                keys = paramiko.HostKeys(str(path))
            except (OSError, paramiko.SSHException, ValueError):
                continue
            entry = keys.lookup(name)
            if entry:
                found += [(path, key) for key in entry.values()]
        return found

    def missing_host_key(self, client, hostname, key):
        offered = fingerprint(key)
        label = f"{key.get_name()} key {offered}"
        if self.pinned:
            if offered in self.pinned:
                self.accepted = offered
                return
            raise HostError(
                f"The host key of {hostname} does not match: it presented the {label}, but "
                f"the key pinned for this server is {' or '.join(sorted(self.pinned))}. "
                "This is what connecting to an impostor (someone between you and the "
                "server) looks like; nothing was sent to it.",
                "Do not continue unless you know why the key differs. If the server was "
                "re-created, read its new fingerprint from its console (the EC2 console "
                "output, or `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it) and "
                "pass it with --trust-host-key.",
            )
        known = self._known(hostname)
        if any(k.asbytes() == key.asbytes() for _, k in known):
            self.accepted = offered
            return
        if known:
            files = ", ".join(sorted({str(p) for p, _ in known}))
            raise HostError(
                f"The host key of {hostname} has CHANGED: it presented the {label}, which "
                f"is not the key recorded for it in {files}. Either the server was "
                "re-installed, or someone is intercepting the connection (an impostor); "
                "nothing was sent to it.",
                "Find out why before going on. If the server was really re-created, check "
                "the new fingerprint on its console, then remove the old entry with "
                f"`ssh-keygen -R '{hostname}'` and pass --trust-host-key with the new one.",
            )
        raise HostError(
            f"The host key of {hostname} is unknown: it presented the {label}, which is "
            "neither pinned for this deployment nor in known_hosts. Connecting blindly "
            "could hand the deployment's secrets to an impostor; nothing was sent.",
            "Check that fingerprint on the server's console (the EC2 console output, or "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it), then pass "
            f"--trust-host-key {offered} (or add the key to known_hosts).",
        )


class _Shell:
    """A remote /bin/sh reading commands from its stdin, one per :meth:`run`.

    Each command runs as ``sh -c COMMAND`` (so a syntax error or ``exit`` ends only that
    child) with its own stdin, without the deployment lock's descriptor (a daemon a
    command starts must not hold the lock after the run), and is followed by a random
    marker on stdout (with the exit status) and on stderr, which tells where its output
    ends.
    """

    def __init__(self, channel):
        self.channel = channel

    @property
    def alive(self):
        return not self.channel.closed and not self.channel.exit_status_ready()

    def close(self):
        self.channel.close()

    def _read(self, out, err, finished, timeout):
        """Read stdout and stderr into ``out`` and ``err`` until ``finished(out, err)``
        returns something, which is returned; ENDED if the shell ends first, TIMED_OUT
        once ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            while self.channel.recv_ready():
                out += self.channel.recv(65536)
            while self.channel.recv_stderr_ready():
                err += self.channel.recv_stderr(65536)
            result = finished(out, err)
            if result is not None:
                return result
            if self.channel.closed or self.channel.exit_status_ready() and not (
                    self.channel.recv_ready() or self.channel.recv_stderr_ready()):
                return ENDED
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TIMED_OUT
            select.select([self.channel], [], [], min(remaining, 5))

    def expect(self, token, busy_token, on_busy, timeout):
        """Read the shell's greeting: (True, stderr) once ``token`` is on stdout, or
        (False, stderr) if the shell ends or ``timeout`` passes first; ``on_busy(stderr)``
        is called when ``busy_token`` shows on stderr."""
        out, err = bytearray(), bytearray()

        def greeted(out, err):
            if busy_token.encode() in err:
                on_busy(err.decode(errors="replace"))
            return True if f"{token}\n".encode() in out else None

        outcome = self._read(out, err, greeted, timeout)
        return outcome is True, err.decode(errors="replace")

    def run(self, command, input=None, timeout=DEFAULT_TIMEOUT, on_line=None):
        """(status, stdout bytes, stderr bytes); status None when the shell went away,
        "timeout" when the command ran out of time. ``on_line(text)`` is called with each
        line of stdout and stderr as it arrives (a carriage return ends a line too)."""
        marker = secrets.token_hex(16)
        tail = (f"; printf '\\n{marker} %d\\n' $?; printf '\\n{marker}\\n' >&2\n")
        if input is None:
            script = f"sh -c {shlex.quote(command)} </dev/null {LOCK_FD}>&-{tail}"
        else:
            data = input.encode() if isinstance(input, str) else bytes(input)
            encoded = base64.encodebytes(data).decode()
            script = (f"base64 -d <<'{marker}' | sh -c {shlex.quote(command)} {LOCK_FD}>&-"
                      f"{tail}"
                      f"{encoded}{marker}\n")
        self.channel.sendall(script.encode())
        out, err = bytearray(), bytearray()
        out_end = f"\n{marker} ".encode()
        err_end = f"\n{marker}\n".encode()

        relay = _LineRelay(on_line, marker) if on_line else None

        def ended(out, err):
            if relay:
                relay.feed(out, err)
            end = out.find(out_end)
            if end >= 0 and out.endswith(b"\n", end + len(out_end)) and err.endswith(err_end):
                return int(out[end + len(out_end):].strip()), end
            return None

        outcome = self._read(out, err, ended, timeout)
        if outcome == ENDED:
            return None, bytes(out), bytes(err)
        if outcome == TIMED_OUT:
            self.close()
            return "timeout", bytes(out), bytes(err)
        status, end = outcome
        return status, bytes(out[:end]), bytes(err[:-len(err_end)])


class _LineRelay:
    """Passes on the complete lines that have arrived since the last call, stdout's and
    stderr's, never the shell's end marker."""

    def __init__(self, on_line, marker):
        self.on_line = on_line
        self.marker = marker.encode()
        self.done = [0, 0]

    def feed(self, *streams):
        for index, data in enumerate(streams):
            end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            if end <= self.done[index]:
                continue
            chunk = bytes(data[self.done[index]:end])
            self.done[index] = end
            for line in chunk.replace(b"\r", b"\n").split(b"\n"):
                if line.strip() and self.marker not in line:
                    self.on_line(line.decode(errors="replace"))


class Connection:
    """One SSH connection to the host: ``connect()``, ``run()``, ``put_files()``,
    ``stage()``, ``close()``.

    ``host`` may be an alias of ``~/.ssh/config``. ``user``, ``port`` and ``key_filename``
    override the config; ``default_user`` applies when neither names a user.
    ``pinned`` holds trusted ``SHA256:...`` fingerprints; without them the key must be in
    ``known_hosts`` (the given files, plus the config's and ``~/.ssh/known_hosts``).
    ``redact`` turns text into text safe to show (secrets masked); ``log`` receives one
    line per command.
    """

    def __init__(self, host, *, user=None, default_user=None, port=None, key_filename=None,
                 pinned=(), known_hosts=(), ssh_config="~/.ssh/config", allow_agent=True,
                 look_for_keys=True, connect_timeout=CONNECT_TIMEOUT, redact=None, log=None,
                 lock=None, lock_wait=LOCK_WAIT, on_lock_wait=None):
        config = self._config(ssh_config, host)
        self.alias = host
        self.host = config.get("hostname", host)
        self.port = int(port if port is not None else config.get("port", 22))
        self.user = user or config.get("user") or default_user or os.environ.get("USER", "")
        self.key_filenames = ([str(Path(key_filename).expanduser())] if key_filename else
                              [str(Path(p).expanduser()) for p in config.get("identityfile", [])
                               if Path(p).expanduser().is_file()])
        config_known = config.get("userknownhostsfile", "").split()
        self.host_keys = HostKeyCheck(
            pinned,
            [*known_hosts, *config_known, "~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"],
        )
        self.allow_agent = allow_agent
        self.look_for_keys = look_for_keys and not key_filename
        self.connect_timeout = connect_timeout
        self.redact = redact or (lambda text: text)
        self.log = log or (lambda line: None)
        self.lock = lock
        self.lock_wait = lock_wait
        self.on_lock_wait = on_lock_wait
        self.client = None
        self.channels_opened = 0
        self.commands_run = 0
        self._shells = {}
        self._sftp = None
        self._staging = None

    @staticmethod
    def _config(path, host):
        if not path:
            return {}
        path = Path(path).expanduser()
        if not path.is_file():
            return {}
        try:
            return paramiko.SSHConfig.from_path(str(path)).lookup(host)
        except (OSError, paramiko.SSHException) as exc:
            raise HostError(f"Cannot read {path}: {exc}.", "Fix the SSH configuration file.")

    @property
    def label(self):
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_fingerprint(self):
        return self.host_keys.accepted

    # ------------------------------------------------------------------ connecting

    def connect(self, wait=0, on_wait=None):
        """Connect, verify the host key, authenticate. While the host is unreachable or
        its SSH server not up yet (an instance booting), retry for up to ``wait`` seconds,
        calling ``on_wait(message)`` before each retry."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._connect_once()
                return self
            except _Retryable as exc:
                if time.monotonic() + 3 > deadline:
                    raise exc.error from None
                if on_wait:
                    on_wait(f"{exc.error.message} Retrying (waiting up to {wait:.0f} s "
                            "while the server boots).")
                time.sleep(3)

    def _connect_once(self):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(self.host_keys)
        where = f"{self.host}:{self.port}"
        try:
            client.connect(
                self.host, port=self.port, username=self.user,
                key_filename=self.key_filenames or None, allow_agent=self.allow_agent,
                look_for_keys=self.look_for_keys, timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
            )
        except HostError:
            client.close()
            raise
        except socket.gaierror as exc:
            client.close()
            raise HostError(f"Cannot resolve the host name {self.host!r} ({exc.strerror}).",
                            "Check --host (or the HostName in ~/.ssh/config).")
        except paramiko.AuthenticationException as exc:
            client.close()
            keys = ", ".join(self.key_filenames) or "the ssh-agent's and ~/.ssh's default keys"
            raise HostError(
                f"{where} refused to log in {self.user!r} ({exc}); tried {keys}.",
                "Check --ssh-user (cloud images: ec2-user on Amazon Linux, admin on Debian) "
                "and --ssh-key, and that its public key is in the user's "
                "~/.ssh/authorized_keys on the server.",
            )
        except paramiko.PasswordRequiredException:
            client.close()
            raise HostError(f"The SSH key {', '.join(self.key_filenames)} is encrypted.",
                            "Load it into ssh-agent (ssh-add) and run again.")
        except (paramiko.ssh_exception.NoValidConnectionsError, ConnectionError,
                socket.timeout, TimeoutError, OSError, EOFError,
                paramiko.SSHException) as exc:
            client.close()
            raise _Retryable(HostError(
                f"Cannot reach SSH on {where} ({_describe(exc)}).",
                "Check that the server is running, that --host and --ssh-port are right, "
                "and that a firewall or security group lets your address reach the port.",
            ))
        self.client = client
        self.channels_opened = 0
        self.log(f"ssh: connected to {self.label}, host key {self.host_keys.accepted}")

    @property
    def transport(self):
        if self.client is None:
            raise HostError("Not connected.", "Call connect() first.")
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostError(f"The SSH connection to {self.label} was lost.",
                            "Check the network and run the command again.")
        return transport

    def close(self):
        if self.client is None:
            return
        self.log(f"ssh: {self.commands_run} commands over {self.channels_opened} channels")
        if self._staging and self._shell(False, required=False):
            try:
                self.run(f"rm -rf {shlex.quote(self._staging)}", check=False, timeout=30)
            except HostError:
                pass  # the connection is going away anyway; /tmp is cleaned at boot
        # list(): a probe that outlived its deadline may still be opening a shell.
        for shell in list(self._shells.values()):
            shell.close()
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()
        self.client = None
        self._shells.clear()
        self._sftp = None
        self._staging = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ------------------------------------------------------------------ commands

    def _open_session(self):
        try:
            channel = self.transport.open_session(timeout=30)
        except paramiko.SSHException as exc:
            raise HostError(f"{self.label} refused a new SSH session ({exc}).",
                            "Check MaxSessions in the server's sshd_config.")
        self.channels_opened += 1
        return channel

    def _shell(self, sudo, required=True):
        shell = self._shells.get(sudo)
        if shell is not None and shell.alive:
            return shell
        if not required:
            return None
        channel = self._open_session()
        as_root = sudo and self.user != "root"
        shell_command = "/bin/sh"
        if sudo and self.lock:
            shell_command = f"/bin/sh -c {shlex.quote(self._locked_shell())}"
        channel.exec_command(f"sudo -n {shell_command}" if as_root else shell_command)
        shell = _Shell(channel)
        if sudo and self.lock:
            self._wait_for_lock(shell)
        self._shells[sudo] = shell
        if sudo and self.lock:
            self._remove_stale_staging()
        return shell

    def _remove_stale_staging(self):
        """Upload directories that runs killed on this side left behind (they may hold a
        copy of the .env): with the lock held, no other run is using one."""
        own = f"! -path {shlex.quote(self._staging)} " if self._staging else ""
        self.run(f"find {STAGING_PARENT} -maxdepth 1 -type d -name 'helios-aws.*' "
                 f"-user {shlex.quote(self.user)} {own}-exec rm -rf {{}} +", sudo=True)

    def _locked_shell(self):
        """A root shell that first takes the host's deployment lock and holds it while it
        lives. A run interrupted on this side (killed, cut off) leaves its last command
        running on the host until it ends; the next run waits for it instead of racing it,
        and two operators cannot provision the same host at once. The lock file is
        root's alone (0600), so no other user can hold it."""
        lock, fd = shlex.quote(self.lock), LOCK_FD
        return (f"mask=$(umask); umask 077\n"
                # (a failed redirection of exec would end the shell before `|| exit`)
                f"mkdir -p \"$(dirname {lock})\" && (: >>{lock}) || exit {LOCK_NO_FILE}\n"
                f"exec {fd}>>{lock}\n"
                f"flock -n {fd}; taken=$?\n"
                "if [ \"$taken\" -eq 1 ]; then\n"
                f"  echo '{LOCK_BUSY}' >&2\n"
                f"  echo \"{LOCK_HOLDER}$(head -c 300 {lock})\" >&2\n"
                f"  flock -w {int(self.lock_wait)} {fd} || exit {LOCK_TIMED_OUT}\n"
                "elif [ \"$taken\" -ne 0 ]; then\n"
                f"  exit {LOCK_NO_FLOCK}\n"
                "fi\n"
                f"printf '%s, pid %s, since %s\\n' \"${{SUDO_USER:-$(id -un)}}\" \"$$\" "
                f"\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" >{lock}\n"
                "umask \"$mask\"\n"
                f"echo '{LOCK_TAKEN}'\n"
                "exec /bin/sh\n")

    def _wait_for_lock(self, shell):
        def busy(err):
            holder = re.search(re.escape(LOCK_HOLDER) + r"(.*)\n", err)
            if not busy.told and holder:
                busy.told = True
                (self.on_lock_wait or self.log)(
                    f"Another helios-aws run holds the deployment lock on {self.host} "
                    f"(last taken by {holder.group(1).strip() or 'an unknown run'}; or an "
                    "interrupted run is finishing its last command there, or the nightly "
                    "backup, helios-backup.service, is running): waiting up to "
                    f"{_duration(self.lock_wait)} for it.")

        busy.told = False
        taken, err = shell.expect(LOCK_TAKEN, LOCK_BUSY, busy, self.lock_wait + 60)
        if taken:
            return
        channel = shell.channel
        status = channel.recv_exit_status() if channel.exit_status_ready() else None
        transport = self.client.get_transport() if self.client else None
        lost = status is None and not (transport and transport.is_active())
        shell.close()
        if lost:
            raise HostError(f"The SSH connection to {self.label} was lost while waiting for "
                            "the deployment lock.", "Check the network and run the command "
                            "again.")
        if status == LOCK_TIMED_OUT or status is None:
            holder = re.search(re.escape(LOCK_HOLDER) + r"(.*)\n", err)
            raise HostError(
                f"Another helios-aws run kept the deployment lock on {self.host} for "
                f"{_duration(self.lock_wait)}"
                + (f" (held by {holder.group(1).strip()})." if holder else "."),
                "If no other run is going, see which process holds it with `sudo lslocks | "
                f"grep {self.lock}` on the server, then run the command again.")
        if status == LOCK_NO_FILE:
            raise HostError(f"Cannot create the deployment lock {self.lock} on {self.host}."
                            + _tail(self.redact(err)), "Check that its directory is writable "
                            "by root and not full.")
        if status == LOCK_NO_FLOCK:
            raise HostError(f"flock failed on {self.host}: the deployment lock {self.lock} "
                            "cannot be taken." + _tail(self.redact(err)),
                            "Install util-linux (it provides flock) on the server.")
        if "sudo" in err:
            raise HostError(f"sudo -n refused to run commands as root for {self.user!r} "
                            f"on {self.host}: {self.redact(err.strip())}", SUDO_HINT)
        raise HostError(f"The root shell on {self.host} ended (exit status {status}) before "
                        "it took the deployment lock." + _tail(self.redact(err)),
                        "Run the command again; if it keeps failing, look at the server's "
                        "logs.")

    def run(self, command, sudo=False, check=True, input=None, timeout=DEFAULT_TIMEOUT,
            step=None, on_line=None):
        """Run ``command`` (a shell command line) and return a :class:`Result`.

        ``sudo`` runs it as root; ``input`` (str or bytes) is its stdin; ``on_line``, if
        given, receives each line of output while the command runs. With ``check``, a
        non-zero exit status raises HostError naming ``step``, the command, the status
        and the last lines of output.
        """
        started = time.monotonic()
        shell = self._shell(sudo)
        status, out, err = shell.run(command, input=input, timeout=timeout, on_line=on_line)
        self.commands_run += 1
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        shown = self.redact(command)
        where = f" (step {step})" if step else ""
        self.log(f"ssh{where}: [{'root' if sudo else self.user}] {shown} -> {status} "
                 f"in {time.monotonic() - started:.2f}s")
        if status is None:
            self._shells.pop(sudo, None)
            if sudo and not out and "sudo" in stderr:
                raise HostError(f"sudo -n refused to run commands as root for {self.user!r} "
                                f"on {self.host}: {self.redact(stderr.strip())}", SUDO_HINT)
            raise HostError(
                f"The remote shell on {self.host} ended while running `{shown}`{where}."
                + _tail(self.redact(stdout + stderr)),
                "Run the command again; if it keeps failing, look at the server's logs.")
        if status == "timeout":
            self._shells.pop(sudo, None)
            raise HostTimeout(
                f"`{shown}`{where} did not finish within {timeout} s on {self.host}."
                + _tail(self.redact(stdout + stderr)),
                "The server may be overloaded or waiting for input; run the command again.")
        result = Result(command, status, stdout, stderr)
        if check and status != 0:
            raise HostError(
                f"`{shown}`{where} failed on {self.host} with exit status {status}."
                + _tail(self.redact(stdout + "\n" + stderr)),
                "Fix the cause shown above and run the command again; steps already done "
                "are not repeated.",
            )
        return result

    # ------------------------------------------------------------------ files

    @property
    def sftp(self):
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, AttributeError) as exc:
                raise HostError(f"{self.label} offers no SFTP ({exc}).",
                                "Enable the sftp subsystem in the server's sshd_config.")
            self.channels_opened += 1
        return self._sftp

    def staging_dir(self):
        """A private directory of the login user for uploads, removed by close()."""
        if self._staging is None:
            if self.lock:
                self._shell(True)  # a run holds the lock before it has anything staged
            answer = self.run(f"mktemp -d {STAGING_PARENT}/helios-aws.XXXXXXXX").stdout.strip()
            # Root installs from there: the answer must name what was asked for.
            if not STAGING_RE.fullmatch(answer):
                raise HostError(f"mktemp on {self.host} answered {answer!r}, not a new "
                                f"directory in {STAGING_PARENT}.",
                                "Look at the server's mktemp and /tmp.")
            self._staging = answer
        return self._staging

    def put_files(self, files, mode=0o644, owner="root", group=None, step=None):
        """Write several small files as root in one go: ``files`` maps remote paths to
        text or bytes. They travel as one tar stream, unpacked by one command, so a
        hundred files cost one upload instead of a hundred round trips."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path, data in files.items():
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(str(path).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        staged = self.stage(buffer.getvalue())
        paths = " ".join(shlex.quote(str(p)) for p in files)
        self.run(f"tar -xf {shlex.quote(staged)} -C / --no-same-owner --no-overwrite-dir && "
                 f"chown {shlex.quote(owner)}:{shlex.quote(group or owner)} {paths} && "
                 f"rm -f {shlex.quote(staged)}", sudo=True, step=step)

    def stage(self, data):
        """Upload ``data`` (bytes) to a new private file of the login user; its path."""
        staged = f"{self.staging_dir()}/{secrets.token_hex(8)}"
        self._sftp_write(staged, data, 0o600)
        return staged

    def _sftp_write(self, path, data, mode):
        try:
            with self.sftp.open(path, "wb") as handle:
                handle.chmod(mode)
                handle.set_pipelined(True)
                handle.write(data)
        except (OSError, paramiko.SSHException) as exc:
            raise HostError(f"Cannot write {path} on {self.host} over SFTP ({exc}).",
                            "Check the path and that the SSH user may write there.")


class _Retryable(Exception):
    """A connection failure that waiting may cure (the server is still booting)."""

    def __init__(self, error):
        super().__init__(error.message)
        self.error = error


def _describe(exc):
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _duration(seconds):
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _tail(text, lines=TAIL_LINES):
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    if not kept:
        return " It printed nothing."
    return "\nLast lines of output:\n" + "\n".join("  " + line for line in kept)
