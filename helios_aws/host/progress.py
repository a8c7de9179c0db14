"""What a package or release install is doing, read from the tools' own output as it runs.

The host's long commands (apt or dnf installing the distribution packages, uv or pip
filling a release's virtualenv) run for minutes. Their output reaches this side line by
line while they run (:meth:`helios_aws.host.ssh.Connection.run` with ``on_line``), and
:class:`ToolProgress` turns the lines it recognises into one short phrase for the step's
progress line, e.g. ``installing 12/80 packages``:

* apt, given ``-o APT::Status-Fd=1``: ``dlstatus:I:PERCENT:Retrieving file I of N`` and
  ``pmstatus:PACKAGE:PERCENT:Unpacking PACKAGE (amd64)`` / ``Configuring ...`` lines, and
  the summary ``N upgraded, M newly installed, K reinstalled, ...`` for the total;
* dnf 4 (``(3/80): NAME.rpm ...`` downloads, ``  Installing : NAME  12/80`` transaction
  lines) and dnf 5 (``[12/80] Installing NAME ...``);
* uv (``Creating virtual environment at: ...``, ``Resolved 80 packages``, ``Downloading
  NAME``, ``Building NAME``, ``Built NAME``, ``Prepared ...``, ``Installed ...``);
* pip (``Collecting NAME``, ``Building wheel for NAME``, ``Installing collected packages:
  a, b, c``).

Anything else is ignored: progress is a courtesy, never a condition of success.
"""

import re

# PACKAGE may carry its architecture (libc6:i386).
APT_STATUS = re.compile(r"(dlstatus|pmstatus):(.*?):([0-9.]+):(.*)$")
APT_SUMMARY = re.compile(r"(\d+) upgraded, (\d+) newly installed(?:, (\d+) reinstalled)?")
APT_FILE = re.compile(r"(\d+) of (\d+)")
# apt's package-manager messages: unpacking comes first, configuring second.
APT_CONFIGURE = ("Preparing to configure", "Configuring", "Installed")
DNF_DOWNLOAD = re.compile(r"^\((\d+)/(\d+)\): ")
DNF4_ACTION = re.compile(r"^\s+(Installing|Upgrading|Reinstalling|Downgrading|Verifying|"
                         r"Cleanup|Erasing|Removing)\s*:\s*\S.*?\s(\d+)/(\d+)\s*$")
DNF5_ACTION = re.compile(r"^\[\s*(\d+)/(\d+)\]\s+(Installing|Upgrading|Reinstalling|"
                         r"Downgrading|Verifying|Removing)\b")
UV_COUNT = re.compile(r"^(Resolved|Prepared|Installed|Audited|Uninstalled) (\d+) packages?\b")
UV_ITEM = re.compile(r"^\s*(Downloading|Downloaded|Building|Built) (\S+)")
UV_VENV = re.compile(r"^Creating virtual environment at: ")
PIP_COLLECTING = re.compile(r"^Collecting (\S+)")
PIP_BUILDING = re.compile(r"^\s*Building wheel for (\S+)")
PIP_INSTALLING = re.compile(r"^Installing collected packages: (.+)$")


def _packages(count, total=None):
    if total:
        return f"{min(count, total)}/{total} packages"
    return f"{count} package" + ("" if count == 1 else "s")


class ToolProgress:
    """Feed it output lines (:meth:`feed`); ``report(text)`` is called whenever the phrase
    describing the install changes."""

    def __init__(self, report):
        self.report = report
        self.text = ""
        self.total = None
        self.phases = {}
        self.collected = 0

    def feed(self, line):
        text = self._read(line)
        if text and text != self.text:
            self.text = text
            self.report(text)

    def _read(self, line):
        line = line.rstrip()
        match = APT_STATUS.search(line)
        if match:
            return self._apt(match.group(1), match.group(2), match.group(4))
        match = APT_SUMMARY.search(line)
        if match:
            self.total = sum(int(n or 0) for n in match.groups())
            return None
        match = DNF_DOWNLOAD.match(line)
        if match:
            return f"downloading {match.group(1)}/{match.group(2)} packages"
        match = DNF4_ACTION.match(line)
        if match:
            action, done, total = match.groups()
            return f"{action.lower()} {done}/{total} packages"
        match = DNF5_ACTION.match(line)
        if match:
            done, total, action = match.groups()
            return f"{action.lower()} {done}/{total} packages"
        match = UV_COUNT.match(line)
        if match:
            return f"{match.group(1).lower()} {_packages(int(match.group(2)))}"
        match = PIP_BUILDING.match(line)
        if match:
            return f"building {match.group(1)}"
        if UV_VENV.match(line):
            return "creating the virtualenv"
        match = UV_ITEM.match(line)
        if match:
            return f"{match.group(1).lower()} {match.group(2)}"
        match = PIP_COLLECTING.match(line)
        if match:
            self.collected += 1
            return f"collecting {_packages(self.collected)}"
        match = PIP_INSTALLING.match(line)
        if match:
            return f"installing {_packages(len(match.group(1).split(',')))}"
        return None

    def _apt(self, kind, package, message):
        if kind == "dlstatus":
            match = APT_FILE.search(message)
            return f"downloading {match.group(1)}/{match.group(2)} packages" if match else None
        if package == "dpkg-exec" or not package:
            return None
        phase = "configuring" if message.startswith(APT_CONFIGURE) else "installing"
        self.phases.setdefault(phase, set()).add(package)
        return f"{phase} {_packages(len(self.phases[phase]), self.total)}"
