"""The .env means the same to every reader: systemd, django-environ and helios-aws.

- Property: any value is either refused by the writer, or written and read back as it
  was by django-environ (the settings overlay's ``read_env``) and by our parser.
- Property: any hand-edited file is either refused by our parser (naming the line), or
  read the same by django-environ, by our parser and by a model of systemd's
  ``EnvironmentFile=`` reader (below). The real systemd's reading of the deployed .env is
  compared with the overlay's in the VM end-to-end test (tests/test_host_vm.py).
- Tables: the line-break injections and the quoting traps, each refused with its line.
"""

import re

import environ
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from helios_aws import envfile
from helios_aws.errors import ConfigError

# Characters that readers treat differently, and plain ones so that values look real.
AWKWARD = ("'\"\\ \t#;$`%=&*{}!~@:/.,-_"
           "\n\r\v\f\x00\x1b\x1c\x1d\x1e\x1f\x7f\x85\xa0\u2028\u2029\ufeff\u00e9\U0001f5f3")
VALUES = st.text(alphabet=st.sampled_from(AWKWARD + "abcXYZ019"), max_size=24) | st.text(
    max_size=12)
PROPERTY = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class ScratchEnv(environ.Env):
    """django-environ reading into a scratch mapping instead of os.environ."""

    ENVIRON = {}


def django_environ_reads(path):
    ScratchEnv.ENVIRON = {}
    ScratchEnv.read_env(str(path), overwrite=True)
    return dict(ScratchEnv.ENVIRON)


SYSTEMD_NEWLINE, SYSTEMD_BLANK = "\n\r", " \t\n\r"


def systemd_reads(text):
    """A model of how systemd reads an ``EnvironmentFile=`` (its documented and observed
    rules, as of v252, Amazon Linux 2023's): lines end at \\n and \\r; blanks around keys
    and bare values are dropped; quotes may start anywhere a value starts and concatenate;
    backslashes escape outside single quotes; a comment ending in a backslash continues
    on the next line; assignments with invalid names or control characters are ignored."""
    pairs = {}
    state, key, value = "pre_key", "", ""
    trailing = None  # where the trailing blanks of a bare value start

    def push(trim):
        nonlocal key, value
        name = key.rstrip(" \t")
        text = value[:trailing] if trim and trailing is not None else value
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and not any(
                ord(c) < 32 and c not in "\t\n" or ord(c) == 127 for c in text):
            pairs[name] = text
        key, value = "", ""

    for char in text:
        if state == "pre_key":
            if char in "#;":
                state = "comment"
            elif char not in SYSTEMD_BLANK:
                state, key = "key", char
        elif state == "key":
            if char in SYSTEMD_NEWLINE:
                state, key = "pre_key", ""
            elif char == "=":
                state, trailing = "pre_value", None
            else:
                key += char
        elif state == "pre_value":
            if char in SYSTEMD_NEWLINE:
                push(False)
                state = "pre_key"
            elif char == "'":
                state = "single"
            elif char == '"':
                state = "double"
            elif char == "\\":
                state = "escape"
            elif char not in SYSTEMD_BLANK:
                state, value = "value", value + char
        elif state == "value":
            if char in SYSTEMD_NEWLINE:
                push(True)
                state = "pre_key"
            elif char == "\\":
                state, trailing = "escape", None
            else:
                if char not in SYSTEMD_BLANK:
                    trailing = None
                elif trailing is None:
                    trailing = len(value)
                value += char
        elif state == "escape":
            state = "value"
            if char not in SYSTEMD_NEWLINE:
                value += char
        elif state == "single":
            if char == "'":
                state = "pre_value"
            else:
                value += char
        elif state == "double":
            if char == '"':
                state = "pre_value"
            elif char == "\\":
                state = "double_escape"
            else:
                value += char
        elif state == "double_escape":
            state = "double"
            if char in "\"\\`$":
                value += char
            elif char != "\n":
                value += "\\" + char
        elif state == "comment":
            if char == "\\":
                state = "comment_escape"
            elif char in SYSTEMD_NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"
    if state not in ("pre_key", "key", "comment", "comment_escape"):
        push(state == "value")
    return pairs


@PROPERTY
@given(value=VALUES)
@example(value="O'Brien \\ \"Elections\"")
@example(value='"quoted"')
@example(value="Votes\x85DEBUG=1")
@example(value="Votes\u2028DEBUG=1")
@example(value=" spaced $HOME #not-a-comment ")
def test_a_value_is_refused_or_read_back_alike_by_every_reader(tmp_path, value):
    try:
        line = f"DEFAULT_FROM_NAME={envfile.quote('DEFAULT_FROM_NAME', value)}\n"
    except ConfigError as exc:
        char = envfile.unreadable_character(value)
        assert char is not None, value
        assert f"U+{ord(char):04X}" in str(exc)
        return
    path = tmp_path / ".env"
    path.write_text("DEBUG=0\n" + line, encoding="utf-8")
    expected = {"DEBUG": "0", "DEFAULT_FROM_NAME": value}
    assert envfile.parse(path.read_text(encoding="utf-8")) == expected
    assert django_environ_reads(path) == expected
    assert systemd_reads(path.read_text(encoding="utf-8")) == expected


HAND_TEXT = st.text(alphabet=st.sampled_from("ab '\"\\#$=nq\t\x85"), max_size=6)
HAND_VALUES = HAND_TEXT | HAND_TEXT.map(lambda t: f"'{t}'") | HAND_TEXT.map(lambda t: f'"{t}"')
LINE_PARTS = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C", "A", "B", "export A", " A", "A ", "#", "; A", "1A", ""]),
        st.sampled_from(["=", "=", "=", " =", "= ", ""]),
        HAND_VALUES,
    ),
    max_size=3,
)


@PROPERTY
@given(parts=LINE_PARTS, ending=st.sampled_from(["\n", "\r\n"]))
@example(parts=[("#", "", " note \\"), ("A", "=", "injected")], ending="\n")
@example(parts=[("A", "=", "x\vDEBUG=1")], ending="\n")
@example(parts=[("A", "=", "'a'b")], ending="\n")
def test_a_hand_edited_file_is_refused_or_read_alike_by_every_reader(tmp_path, parts, ending):
    text = "".join(key + sep + value + ending for key, sep, value in parts)
    path = tmp_path / ".env"
    path.write_bytes(text.encode("utf-8"))
    try:
        ours = envfile.parse(text)
    except ConfigError as exc:
        assert re.search(r"\.env, line \d+: ", str(exc))
        return
    assert django_environ_reads(path) == ours
    assert systemd_reads(text) == ours


# (hand-edited line, what the error says) -- each read differently by two readers.
UNREADABLE_LINES = [
    ("DEFAULT_FROM_NAME=Votes\vDEBUG=1", "U+000B"),
    ("DEFAULT_FROM_NAME=Votes\fDEBUG=1", "U+000C"),
    ("DEFAULT_FROM_NAME=Votes\x1cDEBUG=1", "U+001C"),
    ("DEFAULT_FROM_NAME=Votes\x1dDEBUG=1", "U+001D"),
    ("DEFAULT_FROM_NAME=Votes\x1eDEBUG=1", "U+001E"),
    ("DEFAULT_FROM_NAME=Votes\x85DEBUG=1", "U+0085"),
    ("DEFAULT_FROM_NAME=Votes\u2028DEBUG=1", "U+2028"),
    ("DEFAULT_FROM_NAME=Votes\u2029DEBUG=1", "U+2029"),
    ("DEFAULT_FROM_NAME=Votes\rDEBUG=1", "U+000D"),
    ("# a note\x85DEBUG=1", "U+0085"),
    ("# a note ending in a backslash \\", "comment ends with a backslash"),
    ("  DEBUG=1", "not KEY=value"),
    ("export DEBUG=1", "not KEY=value"),
    ("DEBUG = 1", "not KEY=value"),
    ("DEFAULT_FROM_NAME=O\\'Brien", "backslash outside quotes"),
    ("DEFAULT_FROM_NAME= Votes", "blanks around a value"),
    ("DEFAULT_FROM_NAME='a'b", "single-quoted value"),
    ("DEFAULT_FROM_NAME='multi", "single-quoted value"),
    ("DEFAULT_FROM_NAME='\"a\"'", "in double quotes"),
    ('DEFAULT_FROM_NAME="a\\q"', "the escape \\q"),
    ('DEFAULT_FROM_NAME="a"b"', "not escaped"),
    ('DEFAULT_FROM_NAME="a\\"', "closing double quote is escaped"),
    ("1DEBUG=1", "not KEY=value"),
]


@pytest.mark.parametrize("line,message", UNREADABLE_LINES,
                         ids=[repr(line)[:40] for line, _ in UNREADABLE_LINES])
def test_a_line_the_readers_would_read_differently_is_refused_with_its_number(line, message):
    text = f"DEBUG=0\n# kept\n{line}\nSSL=1\n"
    with pytest.raises(ConfigError) as refused:
        envfile.parse(text, "deploy/.env")
    assert str(refused.value).startswith("deploy/.env, line 3: ")
    assert message in str(refused.value)


def test_the_old_writer_s_files_still_read_the_same():
    text = ("DEBUG=0\nDEFAULT_FROM_NAME='Helios Elections & Co'\nALLOWED_HOSTS=vote.example.org\n"
            "\n# a comment\n; another\nCELERY_BROKER_URL=redis://localhost:6379/0\r\n")
    assert envfile.parse(text) == {
        "DEBUG": "0", "DEFAULT_FROM_NAME": "Helios Elections & Co",
        "ALLOWED_HOSTS": "vote.example.org", "CELERY_BROKER_URL": "redis://localhost:6379/0"}
