"""The Celery broker: its configuration (loopback only), then the service."""

from ..engine import Change, KEEP, UPDATE
from ..errors import HostError
from . import recipes
from .base import (
    HostStep, connection, fact, file_hashes_script, q, sha256, unit_state_script,
)


class BrokerConfig(HostStep):
    """The broker's configuration files, written before its package is installed so it
    never listens beyond loopback, not even once."""

    name = "host: broker configuration"

    def files(self):
        return self.target.recipe.broker_files(self.target.broker)

    @property
    def service(self):
        return self.target.recipe.broker_service(self.target.broker)

    def read(self, ctx):
        return self.facts(ctx, file_hashes_script(self.files())
                          + unit_state_script([self.service]))

    def plan(self, ctx, current):
        details = [f"write {p}" for p, t in self.files().items()
                   if current.get(f"sha.{p}") != sha256(t)]
        if not details:
            return Change(KEEP)
        if current.get(f"active.{self.service}") == "active":
            details.append(f"restart {self.service}")
        return Change(UPDATE, *details)

    def apply(self, ctx, current, change):
        connection(ctx).put_files({p: t for p, t in self.files().items()
                                   if current.get(f"sha.{p}") != sha256(t)}, step=self.name)
        command = "systemctl daemon-reload"
        if current.get(f"active.{self.service}") == "active":
            command += " && " + self.target.recipe.broker_restart(self.target.broker)
        self.sh(ctx, command, timeout=900)


class Broker(HostStep):
    """The Celery broker enabled, running and listening on loopback only."""

    name = "host: broker"

    @property
    def service(self):
        return self.target.recipe.broker_service(self.target.broker)

    def read(self, ctx):
        recipe = self.target.recipe
        ports = " or ".join(f"sport = :{p}" for p in recipe.broker_ports(self.target.broker))
        script = unit_state_script([self.service])
        script += fact("listen", f"ss -Hltn {q(f'( {ports} )')} | awk '{{print $4}}' | xargs")
        if self.target.broker == "redis":
            script += fact("bind", f"grep -E '^bind ' -- {q(recipe.redis_conf())} 2>/dev/null "
                                   "| tail -n 1")
        return self.facts(ctx, script)

    @staticmethod
    def exposed(listen):
        return [a for a in listen.split() if not a.startswith(("127.", "[::1]"))]

    def plan(self, ctx, current):
        details = []
        if self.target.broker == "redis" and current.get("bind") != recipes.REDIS_BIND:
            details.append(f"bind redis to loopback ({recipes.REDIS_BIND})")
        if current.get(f"enabled.{self.service}") != "enabled":
            details.append(f"enable {self.service}")
        if current.get(f"active.{self.service}") != "active":
            details.append(f"start {self.service}")
        exposed = self.exposed(current.get("listen", ""))
        if exposed:
            details.append(f"restart {self.service}: it listens on {' '.join(exposed)}")
        if not details:
            return Change(KEEP, f"{self.service} listening on {current.get('listen')}")
        return Change(UPDATE, *details)

    def apply(self, ctx, current, change):
        recipe, broker = self.target.recipe, self.target.broker
        commands = [f"systemctl enable -- {q(self.service)} >/dev/null 2>&1"]
        restart = bool(self.exposed(current.get("listen", "")))
        if broker == "redis" and current.get("bind") != recipes.REDIS_BIND:
            commands.insert(0, f"echo {q(recipes.REDIS_BIND)} >> {q(recipe.redis_conf())}")
            restart = True
        commands.append(recipe.broker_restart(broker) if restart
                        else f"systemctl start -- {q(self.service)}")
        self.sh(ctx, " && ".join(commands), timeout=900)
        listen = self.read(ctx).get("listen", "")
        if self.exposed(listen):
            raise HostError(f"{self.service} still listens on {' '.join(self.exposed(listen))}.",
                            "Look at the broker's configuration on the server.")
