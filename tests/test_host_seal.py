"""The host half's seal step, fed facts and checked for the commands it sends (as the
other host steps are tested), and the units and the nginx location aws_configure renders
for the seals."""

import shlex

from helios_aws import elections, engine
from helios_aws.host.seal import SealTimer
from test_host_steps import ctx, facts, project, run_step, target  # noqa: F401


def test_the_published_directory_is_made_and_the_timer_enabled(ctx, project):
    change, _ = run_step(SealTimer(target(ctx, project)), ctx)

    assert change.action == engine.CREATE
    assert change.details == ["make /var/www/helios-seal", "enable and start helios-seal.timer"]
    assert ctx.ssh.commands[-1] == (
        "install -d -m 0755 -o root -g root /var/www/helios-seal && systemctl daemon-reload "
        "&& systemctl enable --now helios-seal.timer >/dev/null 2>&1")


def test_the_timer_in_place_is_a_no_op(ctx, project):
    ctx.ssh.reply("cd /\n", facts(published="y", **{"enabled.helios-seal.timer": "enabled",
                                                    "active.helios-seal.timer": "active"}))

    _, outcome = run_step(SealTimer(target(ctx, project)), ctx)

    assert outcome == engine.UNCHANGED


def test_the_timer_runs_roots_own_sealer_every_minute_and_nginx_publishes_the_seals(ctx):
    service = (ctx.out_dir / "systemd/helios-seal.service").read_text()
    timer = (ctx.out_dir / "systemd/helios-seal.timer").read_text()
    site = (ctx.out_dir / "nginx/helios-https.conf").read_text()

    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.partition("=")[2])
    assert argv[:5] == ["/srv/helios/tools/helios-aws/bin/python", "-I", "-m",
                        "helios_aws.sealside", "write"]
    assert argv[argv.index("--env-file") + 1] == "/srv/helios/config/.env"
    assert argv[argv.index("--publish-dir") + 1] == "/var/www/helios-seal"
    # For a host without backup.json (no bucket): Helios's zone from the project's settings.
    assert argv[argv.index("--time-zone") + 1] == elections.session_time_zone()
    assert argv[argv.index("--service-user") + 1] == "helios"
    assert "User=" not in service  # root: it reads root's files and writes where nginx reads
    assert "OnUnitActiveSec=1min\n" in timer
    assert ("    location /.well-known/helios-seal/ {\n"
            "        alias /var/www/helios-seal/;\n") in site
