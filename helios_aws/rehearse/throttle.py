"""A throttling stand-in for SES on loopback: an HTTP proxy in front of the local AWS
(moto) that answers SES's own throttling error when messages come faster than a set
rate, as SES does above an account's ``MaxSendRate``.

SES v1 sends (``SendRawEmail``, ``SendEmail``) are let through at ``rate`` a second with a
burst of ``burst`` (a token bucket); one over gets HTTP 400 with the ``Throttling`` error
SES sends ("Maximum sending rate exceeded."), over real HTTP, so the client's real error
handling runs. ``GetSendQuota`` is answered with ``rate`` as ``MaxSendRate`` (moto's is
fixed). Everything else is forwarded unchanged. The counts of sends let through and
refused are kept for the caller.
"""

import http.client
import http.server
import threading
import time
import urllib.parse

from .processes import LOOPBACK

SEND_ACTIONS = {"SendRawEmail", "SendEmail"}
THROTTLED = ("<ErrorResponse xmlns=\"http://ses.amazonaws.com/doc/2010-12-01/\"><Error>"
             "<Type>Sender</Type><Code>Throttling</Code><Message>Maximum sending rate "
             "exceeded.</Message></Error><RequestId>{id}</RequestId></ErrorResponse>")
QUOTA = ("<GetSendQuotaResponse xmlns=\"http://ses.amazonaws.com/doc/2010-12-01/\">"
         "<GetSendQuotaResult><Max24HourSend>{day}</Max24HourSend><MaxSendRate>{rate}"
         "</MaxSendRate><SentLast24Hours>{sent}</SentLast24Hours></GetSendQuotaResult>"
         "<ResponseMetadata><RequestId>{id}</RequestId></ResponseMetadata>"
         "</GetSendQuotaResponse>")


class Throttle:
    """The proxy; ``start()`` it, point ``AWS_ENDPOINT_URL`` at ``.url``, ``stop()`` it."""

    def __init__(self, upstream, rate, burst=None, max_24h=1_000_000):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_24h = max_24h
        self.sent = 0
        self.refused = 0
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self._server = None

    def admit(self):
        """One send's turn: True if under the rate (and counted), False if throttled."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.sent += 1
                return True
            self.refused += 1
            return False

    @property
    def url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        throttle = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status, body, headers=()):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self, body):
                connection = http.client.HTTPConnection(throttle.upstream.hostname,
                                                        throttle.upstream.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection")}
                    connection.request(self.command, self.path, body, headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    kept = [(k, v) for k, v in answer.getheaders()
                            if k.lower() not in ("content-length", "connection",
                                                 "transfer-encoding")]
                    self._answer(answer.status, data, kept)
                finally:
                    connection.close()

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = ""
                if self.command == "POST" and self.path in ("/", ""):
                    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                    action = (form.get("Action") or [""])[0]
                request_id = f"throttle-{time.monotonic_ns()}"
                xml = [("Content-Type", "text/xml")]
                if action in SEND_ACTIONS and not throttle.admit():
                    return self._answer(400, THROTTLED.format(id=request_id), xml)
                if action == "GetSendQuota":
                    return self._answer(200, QUOTA.format(
                        day=throttle.max_24h, rate=throttle.rate, sent=throttle.sent,
                        id=request_id), xml)
                return self._forward(body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
