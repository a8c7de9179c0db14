"""A no-op re-run of the host half against an equivalent Ansible playbook.

Both run against the same provisioned Debian 13 host (systemd under qemu, helios_aws/rehearse/vm.py)
and check the same things: the packages, the service user and directories, the trusted
CA files, the broker's files and service, PostgreSQL's role and database, the .env, the
release and the ``current`` link, the applied migrations, the systemd units (files,
enabled, active), the nginx site, the certificate and its renewal timer, and the site's
liveness through nginx. Neither changes anything. Measured: wall time of the whole
command (``manage.py aws_provision --skip-aws`` / ``ansible-playbook``) and SSH
channels opened (ours from the run's log; Ansible's from its ``-vvv`` trace, one
``SSH: EXEC`` per session, with pipelining and ControlPersist on, its fastest setup).

ansible-core is installed from the package index into a virtualenv of its own.

    .venv/bin/python benchmarks/bench_host_noop.py [--runs 3]
        boots a fresh VM and provisions it first (15-20 minutes under emulation);
    .venv/bin/python benchmarks/bench_host_noop.py --project DIR --host H --ssh-port P \\
        --ssh-key KEY --trust-host-key SHA256:... --server URL --ca-bundle FILE
        measures an already provisioned host deployed from the project in DIR.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixtures import helios_env, make_fixture_project, run_manage  # noqa: E402
from test_host_vm import DOMAIN, SETTINGS  # noqa: E402

import helios_aws  # noqa: E402
from helios_aws import layout as layout_mod  # noqa: E402
from helios_aws.rehearse import vm as vm_mod  # noqa: E402
from helios_aws.rehearse.tls import GuestPebble, LocalCA  # noqa: E402
from helios_aws.host import base as host_base, recipes, steps as host  # noqa: E402

ANSIBLE_VENV = Path(os.environ.get("HELIOS_AWS_BENCH_CACHE", "/var/cache/helios-aws")) / \
    "ansible-venv"
GOAL = 3.0


def ansible_bin():
    """ansible-playbook from its own virtualenv, installed on first use."""
    playbook = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not playbook.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run([str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"],
                       check=True)
    return playbook


def snapshot_env(workdir):
    """Commands run with a copy of helios-aws taken now, so that edits to the working tree
    during the long benchmark do not turn the no-op runs into deploys."""
    shutil.copytree(Path(helios_aws.__file__).parent, workdir / "snapshot" / "helios_aws",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return helios_env(PYTHONPATH=str(workdir / "snapshot"))


def provision(project, options, env):
    started = time.monotonic()
    result = run_manage(project, "aws_provision", "--skip-aws", "--no-input",
                        *[w for k, v in options.items() for w in (f"--{k}", str(v))],
                        SETTINGS, env=env, timeout=3600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"aws_provision failed:\n{result.stdout}\n{result.stderr}")
    log = (project / "deploy" / "provision.log").read_text().splitlines()
    channels = [int(m.group(1)) for line in log
                if (m := re.search(r"ssh: \d+ commands over (\d+) channels", line))]
    return elapsed, channels[-1], result.stdout


def playbook(project, ca_bundle):
    """The Ansible play that checks what the host half's steps check, file for file."""
    deploy = project / "deploy"
    d = json.loads((deploy / "deployment.json").read_text())
    layout = layout_mod.HostLayout(d["app_dir"], d["service_user"], "www-data", d["domain"])
    recipe = recipes.Debian13()
    user = layout.service_user
    units = sorted(p.name for p in (deploy / "systemd").iterdir())
    anchors = {f"{recipe.ca_anchor_dir}/helios-aws-{i:03d}{recipe.ca_suffix}": c + "\n"
               for i, c in enumerate(dict.fromkeys(
                   host_base.PEM_RE.findall(Path(ca_bundle).read_text())))}
    copy = [
        {"dest": path, "content": text, "owner": "root", "group": "root", "mode": "0644"}
        for path, text in {**anchors, **recipe.broker_files("rabbitmq")}.items()
    ] + [
        {"dest": f"{layout.unit_dir}/{name}", "content": (deploy / "systemd" / name).read_text(),
         "owner": "root", "group": "root", "mode": "0644"} for name in units
    ] + [
        {"dest": str(layout.env_file), "content": (deploy / ".env").read_text(),
         "owner": user, "group": user, "mode": "0600"},
        {"dest": str(layout.nginx_site),
         "content": (deploy / "nginx" / "helios-https.conf").read_text(),
         "owner": "root", "group": "root", "mode": "0644"},
    ]
    dirs = [(layout.root, "root", "0755"), (layout.releases, "root", "0755"),
            (layout.shared, user, "0750"), (layout.shared / "media", user, "0750"),
            (layout.acme_root, "root", "0755"), ("/var/lib/helios-aws", "root", "0755")]
    services = ["postgresql", "rabbitmq-server", "nginx", *[u for u in units
                                                             if not u.startswith("helios-certbot")],
                "helios-certbot-renew.timer"]
    psql = ("runuser -u postgres -- psql -XAtq -d helios -c \"SELECT rolsuper FROM pg_roles "
            f"WHERE rolname = '{user}'\"")
    tasks = [
        {"name": "packages", "apt": {"name": list(recipe.packages("rabbitmq")),
                                     "state": "present"}},
        {"name": "service user", "user": {"name": user, "system": True,
                                          "home": str(layout.root), "create_home": False,
                                          "shell": recipes.NOLOGIN}},
        {"name": "directories", "file": {"path": "{{ item.0 }}", "state": "directory",
                                         "owner": "{{ item.1 }}", "group": "{{ item.1 }}",
                                         "mode": "{{ item.2 }}"},
         "loop": [[str(p), o, m] for p, o, m in dirs]},
        {"name": "configuration files", "copy": {
            "dest": "{{ item.dest }}", "content": "{{ item.content }}",
            "owner": "{{ item.owner }}", "group": "{{ item.group }}", "mode": "{{ item.mode }}"},
         "loop": copy, "loop_control": {"label": "{{ item.dest }}"}},
        {"name": "postgresql role", "command": psql, "args": {"chdir": "/"},
         "register": "role", "changed_when": False, "failed_when": "role.stdout != 'f'"},
        {"name": "services enabled and running", "systemd_service": {
            "name": "{{ item }}", "enabled": True, "state": "started"}, "loop": services},
        {"name": "distribution renewal timer off", "systemd_service": {
            "name": "certbot.timer", "enabled": False, "state": "stopped"}},
        {"name": "release installed", "stat": {"path": f"{layout.current}/.helios-aws/installed"},
         "register": "release", "failed_when": "not release.stat.exists"},
        {"name": "migrations applied", "shell": (
            "test \"$(runuser -u postgres -- psql -XAtq -d helios -c "
            f"{shlex.quote(host.Migrate.fingerprint_sql)})\" = "
            f"\"$(cat {layout.current}/.helios-aws/migrated)\""),
         "args": {"chdir": "/"}, "changed_when": False},
        {"name": "certificate", "stat": {"path": str(layout.certificate)},
         "register": "cert", "failed_when": "not cert.stat.exists"},
        {"name": "liveness", "command": (
            "curl -sS -o /dev/null -w '%{http_code}' --max-time 60 "
            f"--cacert {layout.certificate} --resolve {d['domain']}:443:127.0.0.1 "
            f"https://{d['domain']}/helios/elections/params"),
         "register": "live", "changed_when": False, "failed_when": "live.stdout != '200'"},
    ]
    return [{"hosts": "helios", "become": True, "gather_facts": False, "tasks": tasks}]


def ansible_run(project, options, known_hosts, workdir):
    work = Path(workdir)
    user = json.loads((project / "deploy" / "deployment.json").read_text())["ssh_user"] \
        or "admin"
    (work / "site.yml").write_text(json.dumps(playbook(project, options["ca-bundle"]), indent=1))
    (work / "inventory.ini").write_text(
        f"helios ansible_host={options['host']} ansible_port={options['ssh-port']} "
        f"ansible_user={user} ansible_ssh_private_key_file={options['ssh-key']} "
        "ansible_python_interpreter=/usr/bin/python3\n")
    (work / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = True\nretry_files_enabled = False\n"
        "[ssh_connection]\npipelining = True\n"
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s "
        f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    result = subprocess.run([str(ansible_bin()), "-i", str(work / "inventory.ini"), "-vvv",
                             str(work / "site.yml")], capture_output=True, text=True, env=env,
                            cwd=work)
    elapsed = time.monotonic() - started
    recap = re.search(r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout)
    if result.returncode != 0 or not recap or recap.group(1) != "0":
        raise SystemExit(f"the Ansible play did not pass unchanged:\n{result.stdout[-5000:]}")
    sessions = result.stdout.count("SSH: EXEC ssh")
    return elapsed, sessions


def boot_and_provision(workdir, env):
    """A fresh VM, provisioned once by the host half; returns what the runs need."""
    ca = LocalCA(workdir / "ca")
    pebble = GuestPebble(workdir / "pebble", ca)
    vm = vm_mod.boot()
    project = make_fixture_project(workdir)
    result = run_manage(project, "aws_configure", "--os", "debian13", "--domain", DOMAIN,
                        "--email", "elections@helios-vm.test", "--auth-systems", "password",
                        "--no-input", SETTINGS, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    bundle = workdir / "bundle.pem"
    local = sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt"))
    bundle.write_text("".join(p.read_text().strip() + "\n" for p in [pebble.api_ca, *local]))
    options = {"host": vm.host, "ssh-port": vm.ssh_port, "ssh-key": vm.key_path,
               "trust-host-key": vm.host_key_fingerprint, "server": pebble.directory_url,
               "ca-bundle": bundle}
    seconds, _, _ = provision(project, options, env)
    print(f"first run (provisioning the VM): {seconds:.0f} s", flush=True)
    return vm, pebble, project, options


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    for flag in ("project", "host", "ssh-port", "ssh-key", "trust-host-key", "server",
                 "ca-bundle", "host-key-line"):
        parser.add_argument(f"--{flag}")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-host-"))
    env = snapshot_env(workdir)
    vm = pebble = None
    if args.project:
        project = Path(args.project)
        options = {"host": args.host, "ssh-port": args.ssh_port, "ssh-key": args.ssh_key,
                   "trust-host-key": args.trust_host_key, "server": args.server,
                   "ca-bundle": args.ca_bundle}
        key_line = args.host_key_line
    else:
        vm, pebble, project, options = boot_and_provision(workdir, env)
        key_line = vm.host_key_line
    try:
        # Ansible's OpenSSH checks the same host key, from a known_hosts file.
        known_hosts = workdir / "known_hosts"
        known_hosts.write_text(f"[{options['host']}]:{options['ssh-port']} {key_line}\n")
        ours, theirs = [], []
        for _ in range(args.runs):
            seconds, channels, out = provision(project, options, env)
            if "no changes" not in out:
                raise SystemExit(f"the host half was not a no-op:\n{out}")
            ours.append((seconds, channels))
            theirs.append(ansible_run(project, options, known_hosts, workdir))
    finally:
        if vm is not None:
            vm.stop()
            pebble.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ours_time = statistics.median(s for s, _ in ours)
    theirs_time = statistics.median(s for s, _ in theirs)
    rows = [("helios-aws host half", ours_time, ours[-1][1]),
            ("Ansible (pipelining, ControlPersist)", theirs_time, theirs[-1][1])]
    print(f"\nNo-op re-run against the provisioned host, median of {args.runs}:")
    print(f"{'tool':<40} {'wall time':>10} {'SSH channels':>13}")
    for name, seconds, channels in rows:
        print(f"{name:<40} {seconds:>9.1f}s {channels:>13}")
    ratio = theirs_time / ours_time
    print(f"\nhelios-aws is {ratio:.1f}x faster (goal: {GOAL:.0f}x)")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
