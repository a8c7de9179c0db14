"""Releases: the .env, a new release installed beside the serving one, its migrations,
and the switch of ``current`` to it (see ``rollback`` for going back)."""

import datetime
import shlex
from pathlib import PurePosixPath

from .. import configure, layout as layout_mod
from ..engine import CREATE, Change, KEEP, UPDATE
from ..errors import HostError
from . import recipes, release as release_mod
from .base import (
    COMMIT_RE, EXTRA_PACKAGES, KEEP_RELEASES, RELEASE_GLOB, RELEASE_NAME_RE, STAMP_GLOB,
    HostStep, connection, fact, q, release_name, restart_running, sha256,
)
from .database import Postgres


class EnvFile(HostStep):
    """The .env aws_configure wrote, as config/.env: 0600, owned by the service user.

    config/ is root's (the service user may only read in it), so no link can stand in
    for the file that systemd, as root, reads for the units: root writes it there by a
    rename of its own. The .env of earlier versions, in the service user's shared/, is
    removed by the units' step once the units read this one."""

    name = "host: .env"

    def read(self, ctx):
        env = q(self.target.layout.env_file)
        return self.facts(ctx, fact("sha", f"[ -L {env} ] || sha256sum -- {env} 2>/dev/null"
                                           " | cut -c1-64")
                          + fact("stat", f"stat -c '%U %a' -- {env} 2>/dev/null"))

    def plan(self, ctx, current):
        lay = self.target.layout
        text = self.target.local(configure.ENV_NAME)
        if current.get("sha") == sha256(text) and current.get("stat") == \
                f"{lay.service_user} 600":
            return Change(KEEP)
        return Change(UPDATE if current.get("sha") else CREATE,
                      f"{lay.env_file} (0600, {lay.service_user})")

    def apply(self, ctx, current, change):
        lay = self.target.layout
        staged = connection(ctx).stage(self.target.local(configure.ENV_NAME))
        new = q(f"{lay.env_file}.helios-aws-new")
        user = q(lay.service_user)
        self.sh(ctx, f"install -m 600 -o {user} -g {user} -T -- {q(staged)} {new} && "
                     f"mv -fT -- {new} {q(lay.env_file)} && rm -f -- {q(staged)}")
        # Running services read the file only when they start.
        self.sh(ctx, restart_running())


class Release(HostStep):
    """The code and its virtualenv in a new release directory (not yet serving)."""

    name = "host: release"

    def source(self, ctx):
        """(release id, describe, payload) where payload builds what to upload."""
        cached = ctx.facts.get("host_release_source")
        if cached:
            return cached
        target = self.target
        wheel_name, wheel = release_mod.wheel()
        install = [target.broker, target.recipe.os]
        if target.options.get("git_url"):
            url, git_config = release_mod.split_credentials(target.options["git_url"])
            ref = target.options.get("git_ref") or "HEAD"
            ctx.facts["git_config"] = git_config
            commit = self.remote_commit(ctx, url, ref)
            ident = release_mod.release_id("git", url, commit, sha256(wheel), install)
            source = {"id": ident, "describe": f"{url} {ref} ({commit[:12]})", "git": (url, commit),
                      "wheel": (wheel_name, wheel)}
        else:
            root = target.project.root
            files = release_mod.project_files(root, exclude=[ctx.out_dir])
            digest = release_mod.digest(root, files)
            ident = release_mod.release_id("files", digest, sha256(wheel), install,
                                           target.project.dependency_source)
            source = {"id": ident, "describe": f"{len(files)} files from {root}",
                      "files": (root, files), "wheel": (wheel_name, wheel)}
        ctx.facts["host_release_source"] = source
        return source

    def remote_commit(self, ctx, url, ref):
        """The commit of branch or tag ``ref`` (exactly that name: ``git ls-remote`` alone
        matches the ends of names, so ``main`` would also find ``refs/heads/a/main``)."""
        if COMMIT_RE.fullmatch(ref):
            return ref
        branch, tag, peeled = (("HEAD", None, None) if ref == "HEAD" else
                               (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}"))
        names = [n for n in (branch, tag, peeled) if n]
        out = self.sh(ctx, f"cd / && {self.git(ctx)} ls-remote -- {q(url)} {shlex.join(names)}",
                      sudo=False, timeout=120).stdout
        found = {}
        for line in out.splitlines():
            commit, _, name = line.partition("\t")
            if name in names:
                found[name] = commit.strip()
        tagged = found.get(peeled) or found.get(tag)  # an annotated tag's commit is peeled
        if found.get(branch) and tagged:
            raise HostError(f"{url} has both a branch and a tag named {ref!r}.",
                            "Give --git-ref the commit to deploy instead (the branch is at "
                            f"{found[branch]}, the tag at {tagged}).")
        commit = found.get(branch) or tagged
        if not commit:
            raise HostError(f"{url} has no branch or tag named {ref!r}.",
                            "Check --git-url and --git-ref.")
        if not COMMIT_RE.fullmatch(commit):
            raise HostError(f"git ls-remote answered {commit!r} for {ref!r}, which is not a "
                            "commit id.", "Check --git-url: it should name a git repository.")
        return commit

    def git(self, ctx):
        """``git``, reading --git-url's credentials (if any) from a private staged file."""
        config = ctx.facts.get("git_config")
        if not config:
            return "git"
        return f"GIT_CONFIG_GLOBAL={q(connection(ctx).stage(config.encode()))} git"

    def read(self, ctx):
        source = self.source(ctx)
        lay = self.target.layout
        state = self.target.state_dir / "releases"
        script = (f"cd {q(lay.releases)} 2>/dev/null || exit 0\n"
                  f"for d in {STAMP_GLOB}-{source['id']}; do "
                  "[ -d \"$d\" ] && [ ! -L \"$d\" ] || continue; "
                  f"if [ -f {q(state)}/\"$d\"/installed ]; then printf 'ready=%s\\0' \"$d\"; "
                  "else printf 'partial=%s\\0' \"$d\"; fi; done\n")
        return self.facts(ctx, script)

    def plan(self, ctx, current):
        source = self.source(ctx)
        lay = self.target.layout
        if current.get("ready"):
            ready = release_name(current["ready"])
            ctx.facts["host_release_dir"] = str(lay.releases / ready)
            return Change(KEEP, f"release {ready}")
        return Change(CREATE, f"release {source['id']}: {source['describe']}")

    def apply(self, ctx, current, change):
        source = self.source(ctx)
        target, lay = self.target, self.target.layout
        conn = connection(ctx)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
        rel = lay.releases / f"{stamp}-{source['id']}"
        # This tool's records of the release live outside it: the project's files cannot
        # aim them anywhere.
        state = target.release_state(rel.name)
        wheel_name, wheel = source["wheel"]
        staged_wheel = conn.stage(wheel)
        user = q(lay.service_user)
        steps = ["set -e", "umask 022", "cd /"]
        if current.get("partial"):
            partial = release_name(current["partial"])
            steps.append(f"rm -rf -- {q(lay.releases / partial)} "
                         f"{q(target.release_state(partial))}")
        steps += [f"mkdir -- {q(rel)}", f"install -d -m 0755 -- {q(state)}"]
        if "git" in source:
            url, commit = source["git"]
            steps += [f"cd {q(rel)}", "git init -q .",
                      f"{self.git(ctx)} fetch -q --depth 1 -- {q(url)} {q(commit)}",
                      "git checkout -q FETCH_HEAD", "rm -rf .git"]
        else:
            root, files = source["files"]
            staged = conn.stage(release_mod.archive(root, files))
            steps.append(f"tar -xzf {q(staged)} -C {q(rel)} --no-same-owner")
        wheel_path = state / wheel_name
        steps += [f"cd {q(rel)}",
                  "for n in " + shlex.join(release_mod.RESERVED_NAMES) + "; do "
                  "if [ -e \"$n\" ] || [ -L \"$n\" ]; then echo \"The project has its own "
                  "top-level $n, which the deployment makes; remove it from the "
                  "repository.\" >&2; exit 1; fi; done",
                  f"install -m 0644 -T -- {q(staged_wheel)} {q(wheel_path)}",
                  "ln -s ../../shared/media media",
                  # The install runs the project's build code: as the service user, in a
                  # release it owns for that time only.
                  f"chown -R -h -- {user}:{user} {q(rel)}"]
        extras = [str(wheel_path), *EXTRA_PACKAGES] + (
            ["redis"] if target.broker == "redis" else [])
        venv = f"{rel}/.venv"
        if "git" in source:
            steps.append(f"if [ -f uv.lock ]; then {self.uv_commands(venv, extras)}; "
                         f"else {self.pip_commands(venv, extras)}; fi")
        elif target.uses_uv:
            steps.append(self.uv_commands(venv, extras))
        else:
            steps.append(self.pip_commands(venv, extras))
        steps += [f"{self.as_service_user()} {q(venv)}/bin/python -m compileall -q "
                  f"-x '/\\.venv/' {q(rel)} >/dev/null",
                  # Then the code is root's again: the app cannot change what it runs.
                  f"chown -R -h -- root:root {q(rel)}",
                  f"printf '%s\\n' {q(source['describe'])} > {q(state / 'source')}",
                  f"touch -- {q(state / 'installed')}"]
        self.sh_with_progress(ctx, "\n".join(steps), timeout=3600)
        ctx.facts["host_release_dir"] = str(rel)

    def as_service_user(self):
        """The start of a command that runs as the service user, at home."""
        lay = self.target.layout
        return f"runuser -u {q(lay.service_user)} -- env HOME={q(lay.root)}"

    def uv_commands(self, venv, extras):
        cache = q(self.target.cache_dir / "uv")
        env = (f"{self.as_service_user()} UV_PYTHON={recipes.PYTHON} UV_PYTHON_DOWNLOADS=never "
               f"UV_NATIVE_TLS=1 UV_CACHE_DIR={cache} UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 "
               f"UV_PROJECT_ENVIRONMENT={q(venv)}")
        uv = q(self.target.uv)
        return (f"{env} {uv} sync --frozen --no-dev && "
                f"{env} {uv} pip install --python {q(venv)}/bin/python "
                f"-- {shlex.join(extras)}")

    def pip_commands(self, venv, extras):
        user = self.as_service_user()
        pip = f"{user} PIP_CERT={q(self.target.recipe.ca_bundle)} " \
              f"PIP_CACHE_DIR={q(self.target.cache_dir / 'pip')} {q(venv)}/bin/pip"
        return (f"{user} {recipes.PYTHON} -m venv {q(venv)} && "
                f"{pip} install --disable-pip-version-check -r requirements.txt "
                f"-- {shlex.join(extras)}")


class Migrate(HostStep):
    """``manage.py migrate`` from the new release, as the service user with the .env."""

    name = "host: migrate"
    fingerprint_sql = ("SELECT md5(coalesce(string_agg(app || '.' || name, ',' "
                       "ORDER BY app, name), '')) FROM django_migrations")

    def release_dir(self, ctx):
        return PurePosixPath(ctx.facts["host_release_dir"]) if ctx.facts.get(
            "host_release_dir") else None

    def read(self, ctx):
        rel = self.release_dir(ctx)
        script = fact("db", f"runuser -u postgres -- psql -XAtq -d {q(Postgres.database)} "
                            f"-c {q(self.fingerprint_sql)} 2>/dev/null")
        if rel:
            script += fact("done", f"cat -- {q(self.marker(rel))} 2>/dev/null")
        return self.facts(ctx, script)

    def marker(self, rel):
        return self.target.release_state(rel.name) / "migrated"

    def plan(self, ctx, current):
        rel = self.release_dir(ctx)
        if rel is not None and current.get("db") and current.get("done") == current["db"]:
            return Change(KEEP)
        return Change(UPDATE, f"migrate the database with release {rel.name if rel else 'new'}")

    def manage(self, rel, *args):
        lay = self.target.layout
        return (f"cd {q(rel)} && runuser -u {q(lay.service_user)} -- env "
                f"HELIOS_ENV_FILE={q(lay.env_file)} "
                f"DJANGO_SETTINGS_MODULE={layout_mod.SETTINGS_MODULE} "
                f"{q(rel)}/.venv/bin/python manage.py {shlex.join(args)}")

    def apply(self, ctx, current, change):
        rel = self.release_dir(ctx)
        self.sh(ctx, self.manage(rel, "migrate", "--no-input"), timeout=1800)
        fingerprint = self.read(ctx)["db"]
        self.sh(ctx, f"printf '%s\\n' {q(fingerprint)} > {q(self.marker(rel))}")


class Switch(HostStep):
    """Point ``current`` at the new release, restart the app, prune old releases."""

    name = "host: switch release"

    def read(self, ctx):
        lay = self.target.layout
        return self.facts(ctx, fact("current", f"readlink -- {q(lay.current)}"))

    def wanted(self, ctx):
        release_dir = ctx.facts.get("host_release_dir")
        return f"releases/{PurePosixPath(release_dir).name}" if release_dir else None

    @staticmethod
    def serving(current):
        """The name of the release ``current`` points at (checked), or None."""
        link = current.get("current")
        if not link:
            return None
        directory, _, name = link.partition("/")
        if directory != "releases" or not RELEASE_NAME_RE.fullmatch(name):
            raise HostError(f"The server's current link points at {link!r}, not at a "
                            "release this tool made.",
                            "Look at it on the server; remove it if it is not serving, or "
                            "point it at releases/<release> by hand.")
        return name

    def plan(self, ctx, current):
        self.serving(current)
        wanted = self.wanted(ctx) or "the new release"
        if current.get("current") == wanted:
            return Change(KEEP, f"current -> {wanted}")
        was = current.get("current") or "nothing"
        return Change(UPDATE, f"current -> {wanted} (was {was})")

    def apply(self, ctx, current, change):
        lay = self.target.layout
        keep = int(self.target.options.get("keep_releases") or KEEP_RELEASES)
        wanted = self.wanted(ctx)
        new_link = f"{lay.current}.helios-aws-new"
        serving = self.serving(current)
        # Newest first by name (names start with a UTC time stamp); the serving one and the
        # previous one always stay. Only names of the release form are listed, one per
        # NUL-terminated record, then this tool's records of the releases removed.
        state = self.target.state_dir / "releases"
        self.sh(ctx, "\n".join([
            "set -e",
            f"ln -sfn -- {q(wanted)} {q(new_link)}",
            f"mv -fT -- {q(new_link)} {q(lay.current)}",
            restart_running(),
            f"cd {q(lay.releases)}",
            f"for d in {RELEASE_GLOB}; do [ -d \"$d\" ] && [ ! -L \"$d\" ] && "
            "printf '%s\\0' \"$d\"; done "
            f"| sort -rz | grep -zvxF -- {q(PurePosixPath(wanted).name)} "
            + (f"| grep -zvxF -- {q(serving)} " if serving else "")
            + f"| tail -zn +{max(keep - 1, 1)} | xargs -0r rm -rf --",
            f"cd {q(state)}",
            f"for d in {RELEASE_GLOB}; do [ -d {q(lay.releases)}/\"$d\" ] || rm -rf -- \"$d\"; "
            "done",
        ]))
