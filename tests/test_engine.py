"""The runner's progress output: a step shows it is alive while it runs.

A slow fake step (a few tenths of a second, with the heartbeat and the terminal's tick
made as short) stands in for the minutes "packages" and "release" take on a real server.
"""

import re
import threading
import time

import pytest

from helios_aws import engine, params
from helios_aws.engine import CREATED, Change, Context, Output, Runner, Step

BEAT = 0.1


class Slow(Step):
    """Works for ``seconds``, saying what it does; records the output seen at its start."""

    def __init__(self, name, seconds, lines, doing=()):
        self.name, self.seconds, self.lines, self.doing = name, seconds, lines, doing
        self.seen_at_start = None

    def read(self, ctx):
        return None

    def plan(self, ctx, current):
        return Change(engine.CREATE, "make it")

    def apply(self, ctx, current, change):
        self.seen_at_start = list(self.lines)
        for text in self.doing:
            ctx.progress(text)
            time.sleep(self.seconds / len(self.doing))
        if not self.doing:
            time.sleep(self.seconds)
        return CREATED


class Quick(Slow):
    def __init__(self, name, lines):
        super().__init__(name, 0, lines)


@pytest.fixture
def ctx(tmp_path):
    deployment = params.build([{"domain": "vote.example.org", "email": "e@example.org"}])
    return Context(deployment, tmp_path / "deploy")


def run(ctx, steps, out):
    ctx.out = out
    return Runner(steps, ctx, out).apply()


def test_in_a_pipe_a_step_says_it_started_and_that_it_is_still_running(ctx):
    lines = []
    out = Output(lines.append, heartbeat=BEAT)
    slow = Slow("host: packages", 0.5, lines, ["downloading 3/80 packages",
                                                "installing 12/80 packages"])

    run(ctx, [Quick("key pair", lines), slow], out)

    assert slow.seen_at_start[-1] == "[2/2] host: packages ..."
    beats = [line for line in lines if "still running" in line]
    assert len(beats) >= 3
    assert all(re.fullmatch(r"\[2/2\] host: packages: still running after \d+s; "
                            r"(downloading 3|installing 12)/80 packages", b) for b in beats)
    assert beats[-1].endswith("installing 12/80 packages")
    assert re.fullmatch(r"\[2/2\] host: packages: created \(0\.[5-9]s\)", lines[-1])
    assert lines[:2] == ["[1/2] key pair ...", "[1/2] key pair: created (0.0s)"]
    log = (ctx.out_dir / engine.LOG_NAME).read_text()
    assert "[2/2] host: packages: started" in log
    assert re.search(r"\[2/2\] host: packages: still running after \d+s; installing 12/80", log)


def test_the_heartbeat_is_at_most_its_interval_apart(ctx):
    stamps = []
    out = Output(lambda text: stamps.append((time.monotonic(), text)), heartbeat=BEAT)

    run(ctx, [Slow("release", 0.65, [])], out)

    beats = [t for t, text in stamps if "still running" in text]
    times = [stamps[0][0]] + beats + [stamps[-1][0]]
    assert len(beats) >= 4
    assert max(b - a for a, b in zip(times, times[1:])) < BEAT * 3


def test_verbosity_0_shows_only_the_outcome_but_the_log_keeps_the_heartbeat(ctx):
    lines = []
    run(ctx, [Slow("release", 0.35, lines, ["installed 80 packages"])],
        Output(lines.append, verbosity=0, heartbeat=BEAT))

    assert len(lines) == 1 and lines[0].startswith("[1/1] release: created (")
    assert "release: still running after 0s; installed 80 packages" in (
        ctx.out_dir / engine.LOG_NAME).read_text()


class Terminal:
    """What a terminal receives: raw text, lines rewritten in place with \\r."""

    def __init__(self):
        self.chunks = []
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            self.chunks.append(text)

    def line(self, text):
        self.write(text + "\n")

    def screen(self):
        """The lines as they end up on the screen."""
        shown = []
        for line in "".join(self.chunks).split("\n"):
            shown.append(line.split("\r\x1b[K")[-1])
        return shown


def test_on_a_terminal_the_step_line_shows_the_elapsed_time_and_is_replaced_by_the_outcome(
        ctx):
    term = Terminal()
    out = Output(term.line, terminal=term.write, heartbeat=10, tick=BEAT)

    class Talks(Slow):
        def apply(self, ctx, current, change):
            time.sleep(0.25)
            ctx.say("Waiting for the console output of i-0123 to show its SSH host keys.")
            return super().apply(ctx, current, change)

    run(ctx, [Talks("SSH host key", 0.3, [], ["reading the console output"])], out)

    rewrites = [c for c in term.chunks if c.startswith("\r\x1b[K[1/1] SSH host key: running")]
    assert len(rewrites) >= 4
    assert rewrites[0] == "\r\x1b[K[1/1] SSH host key: running, 0s"
    assert "\r\x1b[K[1/1] SSH host key: running, 0s; reading the console output" in rewrites
    # Another line first removes the live one, which comes back under it.
    said = term.chunks.index("Waiting for the console output of i-0123 to show its SSH host "
                             "keys.\n")
    assert term.chunks[said - 1] == "\r\x1b[K"
    assert term.chunks[said + 1].startswith("\r\x1b[K[1/1] SSH host key: running")
    assert term.screen() == ["Waiting for the console output of i-0123 to show its SSH "
                             "host keys.", term.screen()[1], ""]
    assert re.fullmatch(r"\[1/1\] SSH host key: created \(0\.[5-9]s\)", term.screen()[1])
    assert "still running" not in "".join(term.chunks)


def test_progress_is_redacted_like_everything_else(ctx):
    lines = []
    ctx.secret("s3cr3t-t0ken")

    run(ctx, [Slow("release", 0.25, lines, ["cloning https://x:s3cr3t-t0ken@git.example"])],
        Output(lines.append, heartbeat=BEAT))

    assert any("cloning https://x:********@git.example" in line for line in lines)
    assert "s3cr3t-t0ken" not in "".join(lines) + (ctx.out_dir / engine.LOG_NAME).read_text()


def test_a_failing_or_interrupted_step_stops_its_heartbeat(ctx):
    class Fails(Slow):
        def apply(self, ctx, current, change):
            time.sleep(0.15)
            raise self.error

    for error, raised in ((engine.HeliosAWSError("it broke"), engine.StepFailed),
                          (KeyboardInterrupt(), engine.Interrupted)):
        lines = []
        step = Fails("release", 0, lines)
        step.error = error
        with pytest.raises(raised):
            run(ctx, [step], Output(lines.append, heartbeat=BEAT / 2))
        count = len(lines)
        time.sleep(BEAT * 2)
        assert len(lines) == count
        assert ctx.activity is None
    assert not [t for t in threading.enumerate() if t.name.startswith("helios-aws ")]
