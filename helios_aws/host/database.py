"""PostgreSQL: the cluster, and Helios's role and database with peer authentication."""

from ..engine import CREATE, Change, KEEP, UPDATE
from ..errors import HostError
from .base import HostStep, fact, q, unit_state_script


class Postgres(HostStep):
    """PostgreSQL running, a non-superuser role owning database ``helios``, reached by the
    service user over the unix socket with peer authentication (no password anywhere)."""

    name = "host: postgresql"
    database = "helios"

    def psql(self, sql, user="postgres", database="postgres"):
        return (f"runuser -u {q(user)} -- psql -XAtq -v ON_ERROR_STOP=1 -d {q(database)} "
                f"-c {q(sql)}")

    def read(self, ctx):
        role = self.target.layout.service_user
        service = self.target.recipe.postgres_service
        lit = role.replace("'", "''")
        sql = ("SELECT coalesce((SELECT CASE WHEN rolsuper THEN 'superuser' ELSE 'role' END "
               f"FROM pg_roles WHERE rolname = '{lit}'), 'none') || ' ' || "
               "coalesce((SELECT pg_get_userbyid(datdba) || ' ' || "
               "pg_encoding_to_char(encoding) FROM pg_database "
               f"WHERE datname = '{self.database}'), 'none')")
        # The cluster's bootstrap superuser (oid 10, "postgres" as packaged) administers it.
        script = (unit_state_script([service])
                  + fact("db", f"{self.psql(sql)} 2>/dev/null")
                  + fact("bootstrap", self.psql("SELECT rolname FROM pg_roles WHERE oid = 10")
                         + " 2>/dev/null")
                  + fact("peer", f"{self.psql('SELECT current_user', role, self.database)} "
                                 "2>/dev/null"))
        return self.facts(ctx, script)

    def check_role(self, current):
        """The service user's role name; HostError if it is the cluster's bootstrap
        superuser, which this step would otherwise demote."""
        role = self.target.layout.service_user
        if role in ("postgres", current.get("bootstrap")):
            raise HostError(f"The service user {role} is PostgreSQL's bootstrap superuser: "
                            "taking superuser away from it would lock the cluster's "
                            "administration.", "Deploy with another --service-user "
                            "(the default is helios).")
        return role

    def plan(self, ctx, current):
        role = self.check_role(current)
        service = self.target.recipe.postgres_service
        details = []
        if current.get(f"enabled.{service}") != "enabled":
            details.append(f"enable {service}")
        if current.get(f"active.{service}") != "active":
            details.append(f"start {service}")
        db = (current.get("db") or "none none").split()
        if db[0] == "none":
            details.append(f"create role {role} (not a superuser)")
        elif db[0] == "superuser":
            details.append(f"take superuser away from role {role}")
        if db[1:] != [role, "UTF8"]:
            details.append(f"database {self.database} owned by {role} (UTF8)")
        if current.get("peer") != role:
            details.append(f"peer authentication for {role}")
        if not details:
            return Change(KEEP)
        return Change(CREATE if db[0] == "none" else UPDATE, *details)

    def apply(self, ctx, current, change):
        role = self.target.layout.service_user
        ident = '"' + role.replace('"', '""') + '"'
        service = self.target.recipe.postgres_service
        init = self.target.recipe.postgres_init()
        self.sh(ctx, f"cd / && {init + ' && ' if init else ''}"
                     f"systemctl enable --now -- {q(service)} >/dev/null 2>&1 && "
                     f"systemctl start -- {q(service)}", timeout=600)
        # Fresh clusters take a moment to accept connections after systemctl returns.
        self.sh(ctx, "cd / && for i in $(seq 60); do "
                     "runuser -u postgres -- psql -XAtq -c 'SELECT 1' >/dev/null 2>&1 && "
                     "exit 0; sleep 1; done; exit 1", timeout=120)
        now = self.read(ctx)
        self.check_role(now)  # the bootstrap superuser is known once the cluster runs
        db = now.get("db", "none none").split()
        statements = []
        if db[0] == "none":
            statements.append(f"CREATE ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        elif db[0] == "superuser":
            statements.append(f"ALTER ROLE {ident} NOSUPERUSER")
        for sql in statements:
            self.sh(ctx, "cd / && " + self.psql(sql))
        if db[1] == "none":
            self.sh(ctx, "cd / && " + self.psql(
                f"CREATE DATABASE {self.database} OWNER {ident} ENCODING 'UTF8' "
                "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0"))
        elif db[1] != role:
            self.sh(ctx, "cd / && " + self.psql(f"ALTER DATABASE {self.database} OWNER TO "
                                                 f"{ident}"))
        elif db[2:] != ["UTF8"]:
            raise HostError(
                f"Database {self.database} exists with encoding {db[2]}, not UTF8.",
                "Helios stores names in any script: dump it, recreate it with "
                "ENCODING 'UTF8' TEMPLATE template0, and restore.")
        if self.read(ctx).get("peer") != role:
            self.sh(ctx, "cd / && hba=$(" + self.psql("SHOW hba_file") + ") && "
                    f"sed -i {q(f'1i local {self.database} {role} peer')} \"$hba\" && "
                    f"systemctl reload {q(service)}")
            if self.read(ctx).get("peer") != role:
                raise HostError(
                    f"{role} still cannot reach database {self.database} by peer "
                    "authentication.", "Look at pg_hba.conf on the server.")
