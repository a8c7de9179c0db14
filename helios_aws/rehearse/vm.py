"""A real systemd host for rehearsals and end-to-end tests: Debian 13 (trixie) under qemu.

The host half of helios-aws (packages, services, nginx, certificates over SSH) can only be
proven on a machine that runs systemd, so the rehearsal and the tests boot one:

* ``build_image()`` debootstraps trixie from the Debian mirror this machine's own apt
  configuration uses, prepares it like a cloud image (user ``admin`` with NOPASSWD sudo,
  systemd-networkd DHCP, sshd with an ed25519 host key made at build time) and writes an
  ext4 disk image. The debootstrap tree and the disk image are cached under
  ``$HELIOS_AWS_VM_CACHE`` (default ``/var/cache/helios-aws/vm``), keyed by a hash of the
  recipe, so changing the recipe rebuilds and an unchanged one boots at once.
* ``boot()`` starts qemu (software emulation: nested KVM does not boot guests on the
  machines this runs on) on a copy-on-write overlay, so the cached image stays pristine and
  every boot starts clean, and waits until SSH accepts the key and systemd is up.

From inside the guest the test machine is ``10.0.2.2`` (qemu user networking); the guest's
SSH, HTTP and HTTPS ports are forwarded to free ports on ``127.0.0.1``.

As a script::

    python -m helios_aws.rehearse.vm build           # build (or find) the cached image
    python -m helios_aws.rehearse.vm boot            # boot, print how to reach it,
                                                     # power off on Ctrl-C
    python -m helios_aws.rehearse.vm ssh [COMMAND]   # boot, run COMMAND (or a shell)
                                                     # over ssh, power off
"""

import argparse
import atexit
import base64
import dataclasses
import fcntl
import hashlib
import inspect
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import paramiko

log = logging.getLogger("helios_aws.tests.vm")

SUITE = "trixie"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "linux-image-amd64",
    "udev",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "debian-archive-keyring",
    "python3",
    "iproute2",
    "procps",
)
# The host's keyring must verify the trixie archive: debootstrap without a keyring it can
# read warns and installs unverified packages, so the keyring is always passed explicitly.
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DISK_SIZE = "8G"
USER = "admin"
HOSTNAME = "helios-vm"
# qemu user networking: the test machine and the DNS forwarder as seen from the guest.
GUEST_HOST_ADDRESS = "10.0.2.2"
GUEST_DNS = "10.0.2.3"

DEFAULT_CACHE = "/var/cache/helios-aws/vm"
REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "ssh-keygen")


class VMError(Exception):
    """The VM could not be built, booted or reached; the message says what to look at."""


# ---------------------------------------------------------------------------------------
# The mirror, from this machine's apt configuration


def _deb822_stanzas(text):
    """Field dictionaries (lower-case keys) of a deb822 file such as ``*.sources``."""
    stanzas = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def _one_line_sources(text):
    """(uri, suite) of each ``deb`` line of a sources.list file."""
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words.pop(0).endswith("]"):
                pass
        if len(words) >= 2:
            entries.append((words[0], words[1]))
    return entries


def apt_sources(root="/"):
    """(uri, suite) of every enabled binary package source in the apt configuration."""
    etc = Path(root, "etc/apt")
    entries = []
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        for fields in _deb822_stanzas(path.read_text()):
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries += [
                (uri, suite)
                for uri in fields.get("uris", "").split()
                for suite in fields.get("suites", "").split()
            ]
    for path in [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]:
        if path.is_file():
            entries += _one_line_sources(path.read_text())
    return entries


def _host_codename(root="/"):
    text = Path(root, "etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.M)
    return match.group(1) if match else None


def debian_mirrors(root="/"):
    """The (archive, security archive or None) URIs this Debian machine installs from.

    The archive is the source serving the host's own release; the security archive is the
    one serving ``<codename>-security``. The guest uses the same two for trixie.
    """
    codename = _host_codename(root)
    entries = [(uri.rstrip("/"), suite) for uri, suite in apt_sources(root)]
    archive = next((uri for uri, suite in entries if codename and suite == codename), None)
    if archive is None:
        raise VMError(
            f"No Debian archive for release {codename!r} in {root}etc/apt/sources.list(.d): "
            "the VM is bootstrapped from the mirror this machine's apt uses."
        )
    security = next((uri for uri, suite in entries if suite == f"{codename}-security"), None)
    return archive, security


# ---------------------------------------------------------------------------------------
# Building the image


def cache_dir():
    return Path(os.environ.get("HELIOS_AWS_VM_CACHE", DEFAULT_CACHE))


def missing_tools():
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def _digest(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def host_key_fingerprint(public_line):
    """OpenSSH's ``SHA256:...`` fingerprint of a ``type base64 [comment]`` key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _run(argv, **kwargs):
    """Run a build command; on failure raise VMError with the end of its output."""
    result = subprocess.run(
        [str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise VMError(
            f"{shlex.join(map(str, argv))} failed with exit status {result.returncode}:\n"
            + "\n".join(output[-40:])
        )
    return result


def _remove_tree(path):
    """Delete a build directory, first unmounting what an interrupted debootstrap left there."""
    path = Path(path).resolve()
    mounts = [
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    for mount in sorted((m for m in mounts if Path(m).is_relative_to(path)), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _locked(directory):
    """Serialise builders sharing a cache directory (parallel test sessions, CI jobs)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish(tmp, final, kind, cache):
    """Move a finished build into place and drop the cache's builds of older recipes."""
    tmp.rename(final)
    for stale in cache.glob(f"{kind}-*"):
        if stale != final:
            log.info("removing %s, built from an older recipe", stale)
            _remove_tree(stale)


def client_key(cache=None):
    """The cache's SSH client key (private key path), created on first use."""
    cache = cache or cache_dir()
    path = cache / "client_ed25519"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "helios-aws-vm", "-f", path])
    return path


def _debootstrap(target, archive):
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--keyring={KEYRING}",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            target,
            archive,
        ]
    )


def _rootfs(cache, archive):
    """The cached debootstrap tree for the current recipe, built if missing."""
    key = _digest(SUITE, PACKAGES, archive, inspect.getsource(_debootstrap))
    final = cache / f"rootfs-{key}"
    if (final / "build.json").exists():
        return final, key
    if not KEYRING.exists():
        raise VMError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
    tmp = cache / f"rootfs-{key}.tmp"
    _remove_tree(tmp)
    tmp.mkdir()
    log.info("debootstrap %s from %s into %s", SUITE, archive, tmp)
    started = time.monotonic()
    _debootstrap(tmp / "root", archive)
    meta = {"suite": SUITE, "archive": archive, "debootstrap_seconds": time.monotonic() - started}
    (tmp / "build.json").write_text(json.dumps(meta, indent=2))
    _publish(tmp, final, "rootfs", cache)
    return final, key


def _write(root, relative, text, mode=0o644):
    path = Path(root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _prepare(root, *, user, authorized_key, archive, security):
    """Turn the debootstrap tree into a bootable cloud-like host; returns the host key line."""
    _write(root, "etc/hostname", f"{HOSTNAME}\n")
    _write(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost\n")
    _write(root, "etc/fstab", "/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n")
    # debootstrap copied the build machine's resolver, which the guest cannot reach.
    _write(root, "etc/resolv.conf", f"nameserver {GUEST_DNS}\n")
    _write(
        root, "etc/systemd/network/20-wired.network", "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n"
    )
    _run(["chroot", root, "systemctl", "enable", "systemd-networkd.service"])

    Path(root, "etc/apt/sources.list").unlink(missing_ok=True)
    sources = f"Types: deb\nURIs: {archive}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
    if security:
        sources += f"\nTypes: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
    _write(root, "etc/apt/sources.list.d/debian.sources", sources)
    # A build machine's policy-rc.d would stop the guest's packages from starting services.
    Path(root, "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    # qemu boots the kernel and initrd copied out at build time, never the guest's /boot, and
    # packages such as postgresql trigger an initramfs rebuild that takes minutes under TCG.
    _write(
        root,
        "etc/initramfs-tools/update-initramfs.conf",
        "update_initramfs=no\nbackup_initramfs=no\n",
    )
    for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in Path(root, leftovers).glob("*"):
            if path.is_file() and path.name != "lock":
                path.unlink()

    _run(["chroot", root, "useradd", "--create-home", "--shell", "/bin/bash", "-G", "sudo", user])
    # "*" rather than a locked "!" password: key logins only, and sshd never sees a locked account.
    _run(["chroot", root, "usermod", "--password", "*", user])
    _write(root, f"etc/sudoers.d/90-{user}", f"{user} ALL=(ALL) NOPASSWD:ALL\n", mode=0o440)
    _write(root, f"home/{user}/.ssh/authorized_keys", authorized_key.strip() + "\n", mode=0o600)
    Path(root, f"home/{user}/.ssh").chmod(0o700)
    _run(["chroot", root, "chown", "-R", f"{user}:{user}", f"/home/{user}/.ssh"])

    # One host key, made now so its fingerprint is known before the first connection.
    for old in Path(root, "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    host_key = Path(root, "etc/ssh/ssh_host_ed25519_key")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{HOSTNAME}", "-f", host_key])
    _write(
        root,
        "etc/ssh/sshd_config.d/10-helios-vm.conf",
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n",
    )
    return Path(f"{host_key}.pub").read_text().strip()


@dataclasses.dataclass(frozen=True)
class Image:
    """A built, cached VM image."""

    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    user: str
    host_key_line: str
    host_key_fingerprint: str
    archive: str
    security: str | None
    timings: dict

    @classmethod
    def load(cls, directory):
        meta = json.loads((directory / "build.json").read_text())
        return cls(
            directory=directory,
            disk=directory / "disk.img",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            user=meta["user"],
            host_key_line=meta["host_key_line"],
            host_key_fingerprint=host_key_fingerprint(meta["host_key_line"]),
            archive=meta["archive"],
            security=meta["security"],
            timings=meta["timings"],
        )


def build_image(*, user=USER, authorized_key=None, cache=None):
    """Return the cached image for the current recipe, building what is missing.

    ``authorized_key`` is the public key line allowed to log in as ``user``; by default the
    public half of ``client_key()``. Builds need root (debootstrap, chroot, file ownership).
    """
    cache = cache or cache_dir()
    with _locked(cache):
        if authorized_key is None:
            authorized_key = Path(f"{client_key(cache)}.pub").read_text()
        archive, security = debian_mirrors()
        rootfs, rootfs_key = _rootfs(cache, archive)
        recipe = [inspect.getsource(f) for f in (_prepare, _write, build_image)]
        key = _digest(
            rootfs_key, security, user, authorized_key.strip(), DISK_SIZE, HOSTNAME, GUEST_DNS,
            recipe,
        )
        final = cache / f"image-{key}"
        if (final / "build.json").exists():
            return Image.load(final)

        tmp = cache / f"image-{key}.tmp"
        _remove_tree(tmp)
        tmp.mkdir()
        root = tmp / "root"
        log.info("preparing the image in %s", tmp)
        started = time.monotonic()
        _run(["cp", "-a", "--reflink=auto", rootfs / "root", root])
        host_key_line = _prepare(
            root, user=user, authorized_key=authorized_key, archive=archive, security=security
        )
        for pattern, name in (("vmlinuz-*", "vmlinuz"), ("initrd.img-*", "initrd.img")):
            found = sorted(Path(root, "boot").glob(pattern))
            if not found:
                raise VMError(f"no boot/{pattern} in the debootstrap tree {rootfs}")
            shutil.copy(found[-1], tmp / name)
        prepared = time.monotonic()
        disk = tmp / "disk.img"
        _run(["mkfs.ext4", "-q", "-F", "-L", "helios-root", "-d", root, disk, DISK_SIZE])
        done = time.monotonic()
        _remove_tree(root)
        rootfs_meta = json.loads((rootfs / "build.json").read_text())
        meta = {
            "user": user,
            "host_key_line": host_key_line,
            "archive": archive,
            "security": security,
            "timings": {
                "debootstrap_seconds": round(rootfs_meta["debootstrap_seconds"], 1),
                "prepare_seconds": round(prepared - started, 1),
                "mkfs_seconds": round(done - prepared, 1),
            },
        }
        (tmp / "build.json").write_text(json.dumps(meta, indent=2))
        _publish(tmp, final, "image", cache)
        return Image.load(final)


# ---------------------------------------------------------------------------------------
# Booting it

_running = set()


@atexit.register
def _kill_leftovers():
    for vm in list(_running):
        vm.kill()


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclasses.dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass(eq=False)
class VM:
    """A booted guest, reachable over SSH at ``host:ssh_port`` as ``user`` with ``key_path``.

    ``known_hosts`` holds the guest's host key (recorded at build time) under
    ``[host]:ssh_port``; ``http_port``/``https_port`` on ``host`` reach the guest's 80/443;
    the guest reaches the test machine at ``guest_host_address``.
    """

    host: str
    ssh_port: int
    http_port: int
    https_port: int
    user: str
    key_path: Path
    known_hosts: Path
    host_key_line: str
    host_key_fingerprint: str
    serial_log: Path
    workdir: Path
    process: subprocess.Popen
    timings: dict
    guest_host_address: str = GUEST_HOST_ADDRESS
    _client: paramiko.SSHClient | None = None

    def connect(self, timeout=30):
        """A new paramiko client, checking the host key strictly against ``known_hosts``."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port=self.ssh_port,
                username=self.user,
                key_filename=str(self.key_path),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client

    def run(self, command, *, check=True, timeout=600):
        """Run a shell command as ``user``; raise VMError on a non-zero status if ``check``."""
        if self._client is None or not self._client.get_transport().is_active():
            self._client = self.connect()
        channel = self._client.get_transport().open_session(timeout=30)
        channel.exec_command(command)
        out, err = [], []
        deadline = time.monotonic() + timeout
        while True:
            if channel.recv_ready():
                out.append(channel.recv(65536))
            elif channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            elif channel.exit_status_ready():
                break
            elif time.monotonic() > deadline:
                channel.close()
                raise VMError(f"{command!r} did not finish within {timeout} s")
            else:
                time.sleep(0.02)
        # Output that arrived together with the exit status.
        while channel.recv_ready():
            out.append(channel.recv(65536))
        while channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
        result = CommandResult(
            channel.recv_exit_status(),
            b"".join(out).decode(errors="replace"),
            b"".join(err).decode(errors="replace"),
        )
        channel.close()
        if check and result.returncode != 0:
            raise VMError(
                f"{command!r} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def ssh_command(self):
        """argv for the OpenSSH client, with the same strict host key checking."""
        return [
            "ssh", "-i", str(self.key_path), "-p", str(self.ssh_port),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            f"{self.user}@{self.host}",
        ]

    def serial_tail(self, lines=40):
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def kill(self):
        """Stop qemu at once and delete the overlay; the serial log stays in ``workdir``."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._close()
        (self.workdir / "overlay.qcow2").unlink(missing_ok=True)

    def stop(self, timeout=60, graceful=True):
        """Power the guest off (killing qemu if it takes longer than ``timeout``, or at once
        unless ``graceful``: the overlay is thrown away anyway), clean up."""
        if graceful and self.process.poll() is None:
            try:
                # The guest may drop the connection before it reports an exit status.
                self.run("sudo systemctl poweroff --no-block", check=False, timeout=15)
                self.process.wait(timeout)
            except (VMError, paramiko.SSHException, OSError, subprocess.TimeoutExpired) as error:
                log.warning("the guest did not power off (%s); killing qemu", error)
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _close(self):
        _running.discard(self)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _fail(self, message):
        self.kill()
        raise VMError(
            f"{message}\nqemu exit status: {self.process.poll()}; serial log {self.serial_log}, "
            f"last lines:\n{self.serial_tail()}"
        )

    def _banner_ready(self):
        try:
            with socket.create_connection((self.host, self.ssh_port), timeout=10) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def _wait_for_ssh(self, timeout):
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail("qemu exited before the guest accepted SSH.")
            # qemu accepts on the forwarded port before sshd listens; only try paramiko once
            # a banner comes back, so early refusals are not logged as transport errors.
            if self._banner_ready():
                try:
                    self._client = self.connect(timeout=20)
                    return
                except paramiko.BadHostKeyException as error:
                    self._fail(f"the guest's host key is not the one recorded at build: {error}")
                except (paramiko.SSHException, OSError, EOFError) as error:
                    last_error = error
            time.sleep(2)
        why = repr(last_error) if last_error else "sshd never answered on the forwarded port"
        self._fail(f"the guest did not accept SSH as {self.user} within {timeout} s ({why}).")


def boot(
    image=None, *, key_path=None, memory_mb=2048, cpus=2, ssh_timeout=900, running_timeout=900
):
    """Boot a fresh guest from ``image`` (default: ``build_image()``) and wait for it.

    Returns a VM once SSH accepts ``key_path`` (default: ``client_key()``) and
    ``systemctl is-system-running --wait`` says running or degraded. Call ``stop()`` after.
    """
    image = image or build_image()
    key_path = Path(key_path or client_key())
    workdir = Path(tempfile.mkdtemp(prefix="helios-aws-vm-"))
    overlay = workdir / "overlay.qcow2"
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image.disk, "-F", "raw", overlay])
    ssh_port, http_port, https_port = _free_ports(3)
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{ssh_port} {image.host_key_line}\n")
    serial_log = workdir / "serial.log"
    forwards = ",".join(
        f"hostfwd=tcp:127.0.0.1:{port}-:{guest}"
        for port, guest in ((ssh_port, 22), (http_port, 80), (https_port, 443))
    )
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
        "-m", str(memory_mb), "-smp", str(cpus),
        "-nographic", "-monitor", "none", "-serial", f"file:{serial_log}", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        # panic=-1 with -no-reboot: a kernel panic ends qemu instead of hanging the wait.
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
        # The overlay is thrown away after the run: the guest's flushes need not reach disk.
        "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
        "-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]
    started = time.monotonic()
    with open(workdir / "qemu.log", "wb") as qemu_log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    vm = VM(
        host="127.0.0.1", ssh_port=ssh_port, http_port=http_port, https_port=https_port,
        user=image.user, key_path=key_path, known_hosts=known_hosts,
        host_key_line=image.host_key_line, host_key_fingerprint=image.host_key_fingerprint,
        serial_log=serial_log, workdir=workdir, process=process, timings=dict(image.timings),
    )
    _running.add(vm)
    try:
        vm._wait_for_ssh(ssh_timeout)
        vm.timings["boot_to_ssh_seconds"] = round(time.monotonic() - started, 1)
        state = vm.run(
            f"timeout {running_timeout} systemctl is-system-running --wait",
            check=False, timeout=running_timeout + 30,
        ).stdout.strip()
        vm.timings["boot_to_running_seconds"] = round(time.monotonic() - started, 1)
        if state not in ("running", "degraded"):
            failed = vm.run("systemctl --failed --no-legend", check=False).stdout
            vm._fail(f"systemd did not finish booting (state {state!r}); failed units:\n{failed}")
    except BaseException:
        vm.kill()
        raise
    log.info("guest up: %s", vm.timings)
    return vm


_shared = None


# ---------------------------------------------------------------------------------------
# Command line


def _describe_image(image):
    size = subprocess.run(
        ["du", "-sh", str(image.directory.parent)], capture_output=True, text=True
    ).stdout.split()[0]
    return (
        f"image      {image.directory}\n"
        f"archive    {image.archive} (security: {image.security})\n"
        f"host key   {image.host_key_fingerprint}\n"
        f"timings    {json.dumps(image.timings)}\n"
        f"cache size {size} ({image.directory.parent})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("build", help="build or find the cached image")
    sub.add_parser("boot", help="boot, print how to reach the guest, power off on Ctrl-C")
    ssh = sub.add_parser("ssh", help="boot, run COMMAND (or a shell) over ssh, power off")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Under SIGTERM too, leave through atexit so qemu is not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    image = build_image()
    print(_describe_image(image))
    if args.action == "build":
        return 0
    vm = boot(image)
    try:
        print(f"guest up   {json.dumps(vm.timings)}")
        print(f"ssh        {shlex.join(vm.ssh_command())}")
        print(f"http/https 127.0.0.1:{vm.http_port} / 127.0.0.1:{vm.https_port}")
        sys.stdout.flush()
        if args.action == "boot":
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        started = time.monotonic()
        status = subprocess.call([*vm.ssh_command(), *command])
        print(f"ssh command exited with {status} after {time.monotonic() - started:.1f} s")
        return status
    finally:
        vm.stop()


if __name__ == "__main__":
    sys.exit(main())
