"""The report: a verdict over the results, as readable text or as versioned JSON.

The JSON schema (``version`` 1) is documented in docs/checks.md; fields are only ever
added, and a change that breaks readers gets a new version.
"""

from .base import AREAS, ERROR, FAIL, PASS, SKIP, STATUSES, WARN, WARNING

SCHEMA_VERSION = 1
FAIL_LEVELS = (ERROR, WARNING)
LABELS = {PASS: "pass", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}
AREA_TITLES = {"config": "Configuration", "site": "Site", "aws": "AWS", "host": "Host",
               "mail": "Mail", "seal": "Elections"}


class Report:
    def __init__(self, results, seconds, subject):
        self.notes = []  # what the run did besides checking (port 22 opened and closed)
        order = {area: index for index, area in enumerate(AREAS)}
        self.results = sorted(results, key=lambda r: order.get(r.area, len(order)))
        self.seconds = seconds
        self.subject = subject

    @property
    def counts(self):
        counts = dict.fromkeys(STATUSES, 0)
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def verdict(self):
        counts = self.counts
        if counts[FAIL]:
            return FAIL
        return WARN if counts[WARN] else PASS

    def failures(self, fail_level=ERROR):
        """The results at or above ``fail_level``: fails, and warns too for "warning"."""
        statuses = (FAIL,) if fail_level == ERROR else (FAIL, WARN)
        return [r for r in self.results if r.status in statuses]

    def as_json(self):
        return {
            "version": SCHEMA_VERSION,
            "subject": self.subject,
            "verdict": self.verdict,
            "counts": self.counts,
            "seconds": round(self.seconds, 3),
            "checks": [r.as_json() for r in self.results],
        }

    def summary(self):
        counts = self.counts
        slowest = max(self.results, key=lambda r: r.seconds, default=None)
        tail = ""
        if slowest:
            # The configuration checks run as one: their time is that of the whole run.
            name = "the configuration checks" if slowest.area == "config" else slowest.id
            tail = f" (slowest: {name}, {slowest.seconds:.2f} s)"
        return (f"{self.verdict.upper()}: {counts[FAIL]} failed, {counts[WARN]} warned, "
                f"{counts[SKIP]} skipped, {counts[PASS]} passed in {self.seconds:.2f} s"
                f"{tail}")

    def lines(self, style, verbosity=1):
        """The text report, styled with Django's ``style`` (ERROR, WARNING, SUCCESS...)."""
        kinds = {PASS: style.SUCCESS, WARN: style.WARNING, FAIL: style.ERROR,
                 SKIP: style.NOTICE}
        width = max((len(r.id) for r in self.results), default=0)
        yield f"Checking {self.subject}"
        area = None
        for result in self.results:
            if verbosity < 1 and result.status in (PASS, SKIP):
                continue
            if result.area != area:
                area = result.area
                yield ""
                yield style.MIGRATE_HEADING(AREA_TITLES.get(area, area))
            timing = f"  ({result.seconds:.2f} s)" if verbosity >= 2 else ""
            label = kinds[result.status](f"{LABELS[result.status]:<4}")
            yield f"  {label}  {result.id:<{width}}  {result.message}{timing}"
            if result.hint and result.status in (WARN, FAIL, SKIP):
                yield f"{' ' * (10 + width)}hint: {result.hint}"
        yield ""
        for note in self.notes if verbosity >= 1 else ():
            yield note
        summary_style = {PASS: style.SUCCESS, WARN: style.WARNING, FAIL: style.ERROR}
        yield summary_style[self.verdict](self.summary())
