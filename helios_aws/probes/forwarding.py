"""Whether an nginx site lets a client choose the address Helios records.

Helios stores with every cast vote the first entry of ``X-Forwarded-For``. nginx is the
only proxy in front of gunicorn, so the header it sends must carry the peer address
alone: a value built from a client's header (``$proxy_add_x_forwarded_for`` appends to
it, ``$http_*`` copies it), a location that passes the client's own header on because it
sets none, or ``real_ip_header`` (which makes ``$remote_addr`` itself come from a header)
each let a voter pick the address in the audit trail. The same holds for the other
forwarding headers a framework may read.

The site is parsed as nginx reads it: blocks, quoted strings, comments, and the rule that
a level with ``proxy_set_header`` directives of its own inherits none from outside.
"""

import re

# Headers that name the client's address, for Django, Helios or middleware they may add.
FORWARDING_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded", "x-client-ip",
                      "true-client-ip", "x-cluster-client-ip", "cf-connecting-ip",
                      "fastly-client-ip", "x-original-forwarded-for")
# What nginx knows of the connection itself, not of what the client sent.
PEER_VARIABLES = ("remote_addr", "remote_port", "scheme", "server_addr", "server_port")
REQUIRED = "x-forwarded-for"  # Helios reads it: a site that does not set it passes the client's on
TOKEN_RE = re.compile(r"""#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")
VARIABLE_RE = re.compile(r"\$\{?(\w+)\}?")


class Block:
    def __init__(self, name, args):
        self.name, self.args = name, args
        self.directives = []  # (name, args)
        self.children = []


def parse(text):
    """The site as a tree of :class:`Block`; raises ValueError when the braces do not
    match."""
    root = Block("main", [])
    stack, words = [root], []
    for match in TOKEN_RE.finditer(text):
        if match.group(0).startswith("#"):
            continue
        double, single, punct, word = match.groups()
        if punct == "{":
            block = Block(words[0] if words else "", words[1:])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif punct == "}":
            if len(stack) == 1:
                raise ValueError("unbalanced '}'")
            stack.pop()
            words = []
        elif punct == ";":
            if words:
                stack[-1].directives.append((words[0], words[1:]))
            words = []
        else:
            words.append(word if word is not None else (double if double is not None
                                                        else single))
    if len(stack) != 1:
        raise ValueError("a block is not closed")
    return root


def problems(text):
    """What in the site lets a client choose its recorded address, one line each."""
    found = []
    _walk(parse(text), [], [], found)
    return found


def _where(path):
    return " ".join(" ".join([b.name, *b.args]) for b in path) or "the top level"


def _walk(block, inherited, path, found):
    own = [(args[0], " ".join(args[1:])) for name, args in block.directives
           if name == "proxy_set_header" and args]
    headers = own or inherited
    where = _where(path)
    for name, args in block.directives:
        if name == "real_ip_header":
            found.append(f"{where}: real_ip_header {' '.join(args)} makes $remote_addr "
                         "the client's own header.")
    if own:
        for header, value in own:
            if header.lower() not in FORWARDING_HEADERS:
                continue
            chosen = [v for v in VARIABLE_RE.findall(value) if v not in PEER_VARIABLES]
            if chosen:
                found.append(f"{where}: {header} is sent as {value!r}, which the client "
                             f"controls (${', $'.join(chosen)}).")
    if any(name == "proxy_pass" for name, _ in block.directives) and not any(
            header.lower() == REQUIRED for header, _ in headers):
        found.append(f"{where}: proxy_pass without proxy_set_header X-Forwarded-For, so "
                     "the client's own header reaches Helios.")
    for child in block.children:
        _walk(child, headers, path + [child], found)
