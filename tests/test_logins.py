"""Login systems: only what the operator configured, each with its credentials, and LDAP
only with the operator's own directory (proven against real OpenLDAP servers)."""

import json
import re

import pytest

import rig
from fixtures import helios_env, make_fixture_project, run_manage
from helios_aws import envfile, logins
from test_configure import read_env, snapshot

SETTINGS = "--settings=helios_aws.settings_overrides.production"
SITE = ["--domain", "vote.example.org", "--email", "elections@example.org", "--no-input"]
ID_RE = re.compile(r"\((\w+\.[CEWID]\d{3})\)")
# Every login secret, by the variable aws_configure reads it from.
SECRET_VALUES = {secret.variable: f"{secret.option}-Zq8-not-for-logs"
                 for secret in logins.SECRETS}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_fixture_project(tmp_path_factory.mktemp("logins"), "requirements")


def configure(project, *args, **secrets):
    return run_manage(project, "aws_configure", SETTINGS, *SITE, *args,
                      env=helios_env(**secrets))


def output_dir(tmp_path):
    return ["--output", str(tmp_path / "deploy")]


def test_default_is_password_plus_the_systems_whose_credentials_are_given(project, tmp_path):
    # Helios's own default (ldap,password,google,facebook) is not carried over.
    plain = configure(project, *output_dir(tmp_path / "a"))
    assert plain.returncode == 0, plain.stderr
    assert read_env(tmp_path / "a/deploy/.env")["AUTH_ENABLED_SYSTEMS"] == "password"

    secret = SECRET_VALUES["HELIOS_GITHUB_CLIENT_SECRET"]
    given = configure(project, *output_dir(tmp_path / "b"), "--github-client-id", "gh-id-7",
                      HELIOS_GITHUB_CLIENT_SECRET=secret)
    assert given.returncode == 0, given.stderr
    env = read_env(tmp_path / "b/deploy/.env")
    assert env["AUTH_ENABLED_SYSTEMS"] == "password,github"
    # The names Helios's settings read for GitHub.
    assert (env["GH_CLIENT_ID"], env["GH_CLIENT_SECRET"]) == ("gh-id-7", secret)
    assert secret not in given.stdout + given.stderr
    assert secret not in (tmp_path / "b/deploy/manifest.json").read_text()
    assert secret not in (tmp_path / "b/deploy/deployment.json").read_text()
    # A re-run finds the secret in the .env: github stays, nothing changes.
    again = configure(project, *output_dir(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    assert "No changes" in again.stdout


def test_every_system_with_its_credentials_under_the_names_helios_reads(project, tmp_path):
    flags = ["--google-client-id", "g-id", "--facebook-app-id", "fb-id", "--github-client-id",
             "gh-id", "--gitlab-client-id", "gl-id", "--linkedin-client-id", "li-id",
             "--ldap-uri", "ldaps://ldap.example.org", "--ldap-bind-dn",
             "cn=reader,dc=example,dc=org", "--ldap-user-search-base",
             "ou=people,dc=example,dc=org"]
    result = configure(project, *output_dir(tmp_path), *flags, **SECRET_VALUES)
    assert result.returncode == 0, result.stderr
    env = read_env(tmp_path / "deploy/.env")
    assert env["AUTH_ENABLED_SYSTEMS"] == "password,google,facebook,github,gitlab,linkedin,ldap"
    expected = {
        "GOOGLE_CLIENT_ID": "g-id", "FACEBOOK_APP_ID": "fb-id", "GH_CLIENT_ID": "gh-id",
        "GITLAB_CLIENT_ID": "gl-id", "LINKEDIN_CLIENT_ID": "li-id",
        "AUTH_LDAP_SERVER_URI": "ldaps://ldap.example.org",
        "AUTH_LDAP_BIND_DN": "cn=reader,dc=example,dc=org",
        "AUTH_LDAP_USER_SEARCH_BASE": "ou=people,dc=example,dc=org",
        "AUTH_LDAP_USER_FILTER": "(uid=%(user)s)", "AUTH_LDAP_START_TLS": "0",
    }
    expected.update({secret.env: SECRET_VALUES[secret.variable] for secret in logins.SECRETS})
    assert {key: env.get(key) for key in expected} == expected
    shown = result.stdout + result.stderr
    for secret in logins.SECRETS:
        assert secret.env in envfile.SECRET_KEYS
        assert SECRET_VALUES[secret.variable] not in shown
    # The .env reads back the same through django-environ, as the overlay loads it.
    check = run_manage(project, "shell", SETTINGS, "--no-imports", "-c",
                       "from django.conf import settings as s; "
                       "print(s.AUTH_LDAP_USER_SEARCH.filterstr, s.AUTH_LDAP_START_TLS)",
                       env=helios_env(HELIOS_ENV_FILE=str(tmp_path / "deploy/.env")))
    assert check.stdout.split() == ["(uid=%(user)s)", "False"], check.stderr


def test_every_problem_is_reported_at_once_and_nothing_is_written(project, tmp_path):
    configure(project, *output_dir(tmp_path), "--auth-systems", "password")
    before = snapshot(tmp_path / "deploy")
    result = configure(project, *output_dir(tmp_path), "--auth-systems",
                       "password,twitter,devlogin,facebook,github,cas,yahoo,live,ldap",
                       "--github-client-id", "gh-id")
    assert result.returncode == 1
    assert result.stderr.count("CommandError") == 1 and "Hint:" in result.stderr
    for problem in (
        "'twitter' is not a login system of this project",
        "devlogin is refused: it lets anyone log in as anyone",
        "facebook needs --facebook-app-id and HELIOS_FACEBOOK_API_SECRET "
        "(or --facebook-api-secret)",
        "github needs HELIOS_GITHUB_CLIENT_SECRET (or --github-client-secret)",
        "cas is refused",
        "yahoo is refused",
        "'live' is not a login system of this project",
        "ldap needs --ldap-uri and --ldap-bind-dn and --ldap-user-search-base and "
        "HELIOS_LDAP_BIND_PASSWORD",
    ):
        assert problem in result.stderr
    assert snapshot(tmp_path / "deploy") == before


@pytest.mark.parametrize("uri,problem", [
    ("ldap://ldap.forumsys.com", "is Helios's public test directory"),
    ("ldaps://LDAP.forumsys.com.:636", "is Helios's public test directory"),
    ("ldap://ldap.example.org", "would send passwords in the clear"),
    ("http://ldap.example.org", "is not an ldaps://HOST[:PORT] address"),
    ("ldaps://ldap.example.org --ldap-start-tls", "--ldap-start-tls is for ldap:// addresses"),
    ("ldaps://ldap.example.org --ldap-user-filter (uid=alice)", "does not contain %(user)s"),
    ("ldaps://ldap.example.org,ldap://other.example.org", "names 2 servers"),
    ("ldaps://ldap.example.org,ldap://other.example.org", "other.example.org would send "
                                                          "passwords in the clear"),
    ("ldaps://ldap.example.org\tldaps://ldap.forumsys.com", "contains a control character"),
    (("ldaps://ldap.example.org ldaps://ldap.forumsys.com",), "is Helios's public test dir"),
    ("ldaps://ldap.example.org,,ldaps://b.example.org", "names 2 servers"),
    ("ldaps://reader:pw-Zq8@ldap.example.org", "'ldaps://***@ldap.example.org' is not an "
                                               "ldaps://HOST[:PORT] address"),
    ("ldaps://ldap.example.org/dc=example", "is not an ldaps://HOST[:PORT] address"),
    ("ldaps://ldap.example.org --ldap-user-filter (uid=%(user)s", "is not an LDAP filter "
                                                                   "(')' expected at the end)"),
    ("ldaps://ldap.example.org --ldap-user-filter (&(uid=%(user)s)(objectClass=person",
     "is not an LDAP filter"),
    ("ldaps://ldap.example.org --ldap-user-filter (uid=%(user)s)%", "has a % that is not"),
    ("ldaps://ldap.example.org --ldap-user-filter (uid=%(user)s\\z)", "is not an LDAP filter"),
])
def test_ldap_only_with_the_operators_own_directory_over_tls(project, tmp_path, uri, problem):
    uri, *more = uri if isinstance(uri, tuple) else uri.split(" ")
    uri = uri.replace("\\t", "\t")
    result = configure(project, *output_dir(tmp_path), "--ldap-uri", uri, *more, "--ldap-bind-dn",
                       "cn=reader,dc=example,dc=org", "--ldap-user-search-base",
                       "dc=example,dc=org", HELIOS_LDAP_BIND_PASSWORD="pw-Zq8")
    assert result.returncode == 1 and problem in result.stderr
    assert "pw-Zq8" not in result.stdout + result.stderr
    assert not (tmp_path / "deploy").exists()


# ----------------------------------------------------------------------- the real LDAP

LOGIN = """
import json
from helios_auth.auth_systems import ldapauth
attempts = {attempts!r}
print(json.dumps({{label: getattr(ldapauth.authenticate(None, user, password), 'email', None)
                  for label, (user, password) in attempts.items()}}))
"""


@pytest.fixture(scope="module")
def directories(tmp_path_factory, postgres):
    """Our directory (alice) and another one (mallory, and an alice of its own)."""
    base = tmp_path_factory.mktemp("ldap")
    ca = rig.LocalCA(base / "ca")
    ours = rig.Slapd(base / "ours", ca)
    ours.add_user("alice", "alice-pw-Zq8")
    other = rig.Slapd(base / "other", ca, suffix="dc=other,dc=test")
    other.add_user("mallory", "mallory-pw-Zq8")
    other.add_user("alice", "other-alice-pw-Zq8")
    started = []
    try:
        for server in (ours, other):
            server.start()
            started.append(server)
        yield ours, other, ca
    finally:
        for server in started:
            server.stop()


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_a_directory_user_logs_in_through_django_auth_ldap(project, tmp_path, directories,
                                                           postgres, tls):
    ours, other, ca = directories
    uri = ["--ldap-uri", ours.tls_url] if tls == "ldaps" else \
        ["--ldap-uri", ours.url, "--ldap-start-tls"]
    result = configure(project, *output_dir(tmp_path), *uri, "--ldap-bind-dn", ours.reader_dn,
                       "--ldap-user-search-base", ours.people,
                       HELIOS_LDAP_BIND_PASSWORD=ours.reader_password)
    assert result.returncode == 0, result.stderr
    env_file = tmp_path / "deploy/.env"
    assert read_env(env_file)["AUTH_ENABLED_SYSTEMS"] == "password,ldap"
    env = helios_env(HELIOS_ENV_FILE=str(env_file), LDAPTLS_CACERT=str(ca.ca_file),
                     **postgres.env)
    migrated = run_manage(project, "migrate", SETTINGS, env=env)
    assert migrated.returncode == 0, migrated.stderr

    attempts = {
        "alice": ("alice", "alice-pw-Zq8"),
        "alice, wrong password": ("alice", "other-alice-pw-Zq8"),
        "mallory, of the other directory": ("mallory", "mallory-pw-Zq8"),
    }
    login = run_manage(project, "shell", SETTINGS, "--no-imports", "-c",
                       LOGIN.format(attempts=attempts), env=env)
    assert login.returncode == 0, login.stderr
    assert json.loads(login.stdout.splitlines()[-1]) == {
        "alice": "alice@example.test",
        "alice, wrong password": None,
        "mallory, of the other directory": None,
    }
    # The connection is TLS and verified: trusting only the system's CAs, alice fails too.
    del env["LDAPTLS_CACERT"]
    untrusted = run_manage(project, "shell", SETTINGS, "--no-imports", "-c",
                           LOGIN.format(attempts={"alice": attempts["alice"]}), env=env)
    assert json.loads(untrusted.stdout.splitlines()[-1]) == {"alice": None}, untrusted.stderr

    checks = run_manage(project, "check", "--deploy", SETTINGS, env=env)
    assert not {i for i in ID_RE.findall(checks.stdout + checks.stderr)
                if i.startswith("helios_aws.")}, checks.stderr


# A filter helios-aws refuses is one OpenLDAP refuses, and one it accepts finds alice.
FILTERS = ["(uid=%(user)s)", "uid=%(user)s", "(&(objectClass=inetOrgPerson)(uid=%(user)s))",
           "(|(uid=%(user)s)(mail=%(user)s))", "(&(uid=%(user)s)(!(cn=nobody)))",
           "(uid=*%(user)s*)", "(uid:caseIgnoreMatch:=%(user)s)", "(uid~=%(user)s)",
           "(uid=%(user)s", "(uid=%(user)s))", "((uid=%(user)s)", "(u id=%(user)s)",
           "(&(uid=%(user)s)", "(uid=%(user)s)(cn=x)", "(!(uid=%(user)s)(cn=x))",
           "(uid=%(user)s\\zz)", "(=%(user)s)", "(uid:=%(user)s)"]


def test_the_filter_check_agrees_with_openldap(directories):
    import ldap

    ours, _, ca = directories
    connection = ldap.initialize(ours.url)
    connection.set_option(ldap.OPT_X_TLS_CACERTFILE, str(ca.ca_file))
    connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    connection.start_tls_s()
    connection.simple_bind_s(ours.reader_dn, ours.reader_password)
    verdicts = {}
    for text in FILTERS:
        filled = text % {"user": "alice"}
        try:
            found = connection.search_s(ours.people, ldap.SCOPE_SUBTREE, filled, ["uid"])
            openldap = bool(found)
        except ldap.FILTER_ERROR:
            openldap = False
        verdicts[text] = (logins.ldap_filter_problem(text) is None, openldap)
    connection.unbind_s()

    assert {t: ours_ for t, (ours_, theirs) in verdicts.items() if ours_ != theirs} == {}
    assert sum(ok for ok, _ in verdicts.values()) == 9


def test_E013_judges_the_installed_ldap_settings(project, tmp_path):
    result = configure(project, *output_dir(tmp_path), "--ldap-uri", "ldaps://ldap.example.org",
                       "--ldap-bind-dn", "cn=reader,dc=example,dc=org",
                       "--ldap-user-search-base", "dc=example,dc=org",
                       HELIOS_LDAP_BIND_PASSWORD="pw-Zq8")
    assert result.returncode == 0, result.stderr
    env_file = tmp_path / "deploy/.env"
    configured = env_file.read_text()

    def e013(**edits):
        text = configured
        for key, value in edits.items():
            text = "".join(line for line in text.splitlines(keepends=True)
                           if not line.startswith(f"{key}=")) + f"{key}={value}\n"
        env_file.write_text(text)
        checked = run_manage(project, "check", "--deploy", SETTINGS,
                             env=helios_env(HELIOS_ENV_FILE=str(env_file)))
        said = checked.stdout + checked.stderr
        return [line for line in said.splitlines() if "helios_aws.E013" in line], said

    assert e013()[0] == []
    for edits, problem in [
        ({"AUTH_LDAP_SERVER_URI": "ldap://ldap.example.org"},
         "AUTH_LDAP_SERVER_URI ldap://ldap.example.org would send passwords in the clear"),
        ({"AUTH_LDAP_SERVER_URI": "ldap://ldap.example.org", "AUTH_LDAP_START_TLS": "0"},
         "would send passwords in the clear"),
        ({"AUTH_LDAP_SERVER_URI": "ldaps://ldap.example.org,ldap://ldap.example.net"},
         "names 2 servers"),
        ({"AUTH_LDAP_USER_FILTER": "(uid=%(user)s"}, "AUTH_LDAP_USER_FILTER '(uid=%(user)s' "
                                                     "is not an LDAP filter"),
        ({"LDAPTLS_REQCERT": "never"}, "LDAPTLS_REQCERT=never lets anyone"),
    ]:
        lines, said = e013(**edits)
        assert lines and problem in said, (edits, said)
    assert e013(AUTH_LDAP_SERVER_URI="ldap://ldap.example.org", AUTH_LDAP_START_TLS="1")[0] == []


# ----------------------------------------------------------------------------- checks

def check_ids(project, settings, **env):
    result = run_manage(project, "check", "--deploy", settings,
                        env=helios_env(DEBUG="0", **env))
    return {i for i in ID_RE.findall(result.stdout + result.stderr)
            if i.startswith("helios_aws.")}, result


def test_checks_find_the_demo_directory_missing_credentials_and_unknown_systems(project):
    # Helios's own settings, with helios_aws installed by a settings edit: the ldap
    # login still points at the public test directory.
    (project / "plain_settings.py").write_text(
        "from settings import *  # noqa\nINSTALLED_APPS = INSTALLED_APPS + ('helios_aws',)\n")
    ids, result = check_ids(project, "--settings=plain_settings",
                            AUTH_ENABLED_SYSTEMS="password,ldap,github,twitter",
                            GH_CLIENT_ID="gh-id")
    assert {"helios_aws.E013", "helios_aws.E014", "helios_aws.E015"} <= ids, result.stderr
    assert "AUTH_LDAP_SERVER_URI ldap://ldap.forumsys.com is Helios's public test directory" \
        in result.stderr
    assert "github without GH_CLIENT_SECRET" in result.stderr
    assert "github without GH_CLIENT_ID" not in result.stderr
    assert "(helios_aws.E015) " in result.stderr and "twitter" in result.stderr

    # Through the overlay, without a directory in the .env: no server at all, still E013.
    ids, result = check_ids(project, SETTINGS, AUTH_ENABLED_SYSTEMS="password,ldap")
    assert "helios_aws.E013" in ids and "AUTH_LDAP_SERVER_URI is empty" in result.stderr
    assert not {"helios_aws.E014", "helios_aws.E015"} & ids

    ids, result = check_ids(project, SETTINGS, AUTH_ENABLED_SYSTEMS="password,github",
                            GH_CLIENT_ID="gh-id", GH_CLIENT_SECRET="gh-secret-Zq8")
    assert not {"helios_aws.E013", "helios_aws.E014", "helios_aws.E015"} & ids
    assert "gh-secret-Zq8" not in result.stdout + result.stderr


# -------------------------------------------------------------------------- discovery

def test_systems_are_read_from_the_projects_own_package(project, tmp_path):
    assert logins.project_systems(project) == {
        "password", "google", "facebook", "github", "gitlab", "linkedin", "cas", "ldap",
        "yahoo", "devlogin"}
    # Without a registry, each module of the package is a system of that name.
    package = tmp_path / "other/helios_auth/auth_systems"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Login systems."""\n')
    for name in ("password", "github", "_helpers"):
        (package / f"{name}.py").write_text("")
    assert logins.project_systems(tmp_path / "other") == {"password", "github"}
    assert logins.project_systems(tmp_path / "none") is None


def test_the_fixture_offers_a_login_for_an_unknown_system_that_answers_500(project):
    code = ("import json\n"
            "from django.test import Client\n"
            "c = Client(HTTP_HOST='localhost', raise_request_exception=False)\n"
            "print(json.dumps([c.get('/auth/systems').json()['systems'],"
            " c.get('/auth/twitter/login').status_code]))")
    result = run_manage(project, "shell", "--no-imports", "-c", code,
                        env=helios_env(AUTH_ENABLED_SYSTEMS="password,twitter", DEBUG="0"))
    assert json.loads(result.stdout.splitlines()[-1]) == [["password", "twitter"], 500], \
        result.stderr
