"""The web chat: a standard-library HTTP server around one model copy per device.

    GET  /                  the single-page UI (nanochat/static/index.html, no external URLs)
    POST /chat/completions  {"messages": [...], "temperature", "top_k", "max_tokens", "seed"} -> Server-Sent
                            Events: `data: {"token", "kind", "segment"}` per piece, then `data: {"done": true, ...}`
    GET  /health            status, checkpoint (source, tag, step), device(s), workers

Concurrency: `ThreadingHTTPServer` gives every connection a thread. A bounded semaphore
(`--max-concurrent`) admits completion requests; one more gets 429 at once. An admitted request
waits for a free model copy in a queue (`WorkerPool`, one copy per GPU), so N GPUs answer N
conversations at the same time. The slot is taken before the body is read, so slow uploads count
too: each read may stall at most `--request-timeout`, and the whole request (headers + body) must
arrive within `--request-deadline`, else 408 and the slot is free again.

Who may ask (Host, Origin, Content-Type) and what a completion may hold: nanochat/web_request.py;
the model copies: nanochat/web_workers.py.

Every refusal is a JSON `{"error": "..."}` with a 4xx status; the server never sends a traceback.
SIGINT/SIGTERM stop accepting, let streams end at their next token (finish_reason "shutdown"), and
exit 0.
"""
from __future__ import annotations

import io
import itertools
import json
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from nanochat.chat import Reply, model_positions
from nanochat.web_request import (HostPolicy, Limits, RequestError, content_type_refusal,
                                  parse_chat_request)
from nanochat.web_workers import WorkerPool, build_pool, pick_devices

SHUTDOWN_GRACE_S = 10.0
# http.server's own log_message escapes these since gh-100001 (Python 3.12, 3.11 bugfix releases): ours does too
_LOG_ESCAPES = str.maketrans({**{c: rf"\x{c:02x}" for c in itertools.chain(range(0x20), range(0x7f, 0xa0))},
                              ord("\\"): r"\\"})


def log(line: str) -> None:
    """One line on stderr, control characters escaped (a request line may carry terminal escapes)."""
    sys.stderr.write(f"web: {line.translate(_LOG_ESCAPES)}\n")


class DeadlineReader(io.RawIOBase):
    """A connection's reads: each may stall `per_read` seconds, and none runs past `deadline` (monotonic),
    so a client trickling a byte at a time cannot hold its thread and slot for longer than that."""

    def __init__(self, sock: socket.socket, per_read: float, deadline: float):
        self.sock, self.per_read, self.deadline = sock, per_read, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive within --request-deadline")
            self.sock.settimeout(min(self.per_read, left))
        return self.sock.recv_into(buf)

    def finish(self) -> None:
        """The request is in (or refused): the reply's writes get the per-read timeout, not what was left."""
        if self.deadline is not None:
            self.deadline = None
            self.sock.settimeout(self.per_read)


# ----------------------------------------------------------------------------- server

def load_page() -> bytes:
    return resources.files("nanochat").joinpath("static", "index.html").read_bytes()


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True      # a stuck client never keeps the process alive
    allow_reuse_address = True

    def __init__(self, address, request_timeout: float = 30.0, request_deadline: float = 60.0,
                 allowed_hosts: list[str] = ()):
        """Binds at once (a port in use fails before any model is loaded); `attach` the models before
        `serve_forever`."""
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.request_timeout, self.request_deadline = request_timeout, request_deadline
        self.hosts = HostPolicy(address[0], allowed_hosts)
        self.stopping = threading.Event()
        self.page = load_page()
        self._lock = threading.Lock()
        self.in_flight = 0
        super().__init__(address, ChatHandler)

    def attach(self, pool: WorkerPool, tokenizer, limits: Limits, info: dict, max_concurrent: int) -> None:
        self.pool, self.tokenizer, self.limits, self.info = pool, tokenizer, limits, info
        self.max_concurrent = max_concurrent
        self.slots = threading.BoundedSemaphore(max_concurrent)

    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def health(self) -> dict:
        return {"status": "stopping" if self.stopping.is_set() else "ok",
                "model_loaded": len(self.pool) > 0,
                **self.info,
                "workers": len(self.pool), "workers_busy": self.pool.busy(),
                "in_flight": self.in_flight, "max_concurrent": self.max_concurrent,
                "context_tokens": self.limits.context_tokens, "max_chars": self.limits.max_chars,
                "max_tokens": self.limits.max_tokens}

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta


_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'")


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "nanochat-web"
    # HTTP/1.0: one request per connection, a stream simply ends when the connection closes

    def setup(self):
        self.timeout = self.server.request_timeout  # bounds each read (and write) of a stalled client
        super().setup()
        self.rfile.close()  # reads go through the deadline instead (closing drops the socket's reference)
        self.reader = DeadlineReader(self.connection, self.server.request_timeout,
                                     time.monotonic() + self.server.request_deadline)
        self.rfile = io.BufferedReader(self.reader)

    def send_response(self, code, message=None):
        self.reader.finish()
        super().send_response(code, message)

    # -- responses

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, unsupported method...) as JSON too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        if getattr(self, "request_version", "") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a line we could not parse: still answer with a status line
        self._json(code, {"error": message or phrase})

    def log_message(self, format, *args):
        log(f"{self.address_string()} {format % args}")

    # -- routing

    def do_GET(self):
        refused = self.server.hosts.refusal(self.headers)
        if refused:
            self._json(refused.status, {"error": refused.message})
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})
        elif path == "/health":
            self._json(200, self.server.health())
        elif path == "/chat/completions":
            self._json(405, {"error": "use POST for /chat/completions"}, {"Allow": "POST"})
        else:
            self._json(404, {"error": f"no such path {path!r}: use /, /health or POST /chat/completions"})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        refused = self.server.hosts.refusal(self.headers)
        if refused is None and path == "/chat/completions":
            refused = content_type_refusal(self.headers)
        if refused:
            self._drain_body()
            self._json(refused.status, {"error": refused.message})
            return
        if path != "/chat/completions":
            if path in ("/", "/index.html", "/health"):
                self._json(405, {"error": f"use GET for {path}"}, {"Allow": "GET"})
            else:
                self._json(404, {"error": f"no such path {path!r}: POST to /chat/completions"})
            return
        if not self.server.slots.acquire(blocking=False):
            self._drain_body()
            self._json(429, {"error": f"too many requests in flight (at most {self.server.max_concurrent}, "
                                      f"--max-concurrent): retry in a moment"}, {"Retry-After": "1"})
            return
        self.server._count(+1)
        try:
            self._completion()
        except RequestError as exc:
            self._json(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing left to tell it
        except socket.timeout:
            self.close_connection = True
        except Exception as exc:  # never a traceback to the client; one line for the operator
            log(f"internal error: {exc.__class__.__name__}: {exc}")
            try:
                self._json(500, {"error": f"internal error ({exc.__class__.__name__}): see the server log"})
            except OSError:
                pass
        finally:
            self.server._count(-1)
            self.server.slots.release()

    # -- the completion

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "send the body with a Content-Length (chunked uploads are not supported)")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            n = int(raw)
            if n < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"bad Content-Length {raw!r}") from None
        if n > self.server.limits.max_body_bytes:
            self.close_connection = True
            raise RequestError(413, f"the request body is {n} bytes, more than the limit of "
                                    f"{self.server.limits.max_body_bytes} (--max-chars)")
        try:
            body = self.rfile.read(n)
        except socket.timeout:
            self.close_connection = True
            raise RequestError(408, f"the request did not arrive in time (each read may stall "
                                    f"{self.server.request_timeout:g} s, --request-timeout; the whole request "
                                    f"must arrive within {self.server.request_deadline:g} s, --request-deadline)") \
                from None
        if len(body) < n:
            raise RequestError(400, "the request body is shorter than its Content-Length")
        self.reader.finish()
        return body

    def _drain_body(self) -> None:
        """Read (and drop) a refused request's body, so closing the socket does not reset the reply."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if 0 < n <= self.server.limits.max_body_bytes:
                self.rfile.read(n)
        except (ValueError, OSError):
            pass

    def _event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _completion(self) -> None:
        srv = self.server
        req = parse_chat_request(self._read_body(), srv.tokenizer, srv.limits)
        worker = srv.pool.take(srv.stopping)
        if worker is None:
            raise RequestError(503, "the server is shutting down")
        try:
            reply = Reply(worker.engine, req.prompt, req.max_tokens, req.temperature, req.top_k, req.seed)
            pieces = iter(reply)
            # the prefill and first token run before the 200 goes out, so their errors get a real status
            try:
                first = next(pieces, None)
            except ValueError as exc:  # the engine refused the prompt (e.g. it does not fit)
                raise RequestError(413, f"the model cannot take this conversation ({exc})") from None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.close_connection = True
            started = time.perf_counter()
            try:
                piece = first
                while piece is not None:
                    self._event({"token": piece.text, "kind": piece.kind, "segment": piece.segment})
                    if srv.stopping.is_set():
                        reply.finish_reason = "shutdown"
                        break
                    piece = next(pieces, None)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as exc:  # headers are out: report it in the stream
                log(f"generation failed: {exc.__class__.__name__}: {exc}")
                self._event({"error": f"generation failed ({exc.__class__.__name__})", "done": True})
                return
            finally:
                pieces.close()
            self._event({"done": True, "finish_reason": reply.finish_reason, "content": reply.content(),
                         "prompt_tokens": len(req.prompt), "completion_tokens": len(reply.tokens),
                         "worker": worker.index, "seconds": round(time.perf_counter() - started, 3)})
        finally:
            srv.pool.give_back(worker)


# ----------------------------------------------------------------------------- running it

def serve(server: ChatServer) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully."""
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    print(f"nanochat web chat: {server.url()}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(f"{received[0] if received else 'stop'}: shutting down ({server.in_flight} request(s) in flight)",
          flush=True)
    server.stopping.set()
    server.shutdown()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    server.server_close()
    print("stopped", flush=True)


def make_server(args) -> ChatServer:
    """Bind the address, then load the model copies named by the parsed flags (scripts/chat_web.py)."""
    from nanochat.common import UserError
    if args.device_type in ("cpu", "mps") and args.num_gpus not in (None, 1):
        raise UserError(f"--num-gpus={args.num_gpus} needs CUDA GPUs; on {args.device_type} the server runs one "
                        f"worker (drop --num-gpus or use --device-type=cuda)")
    try:
        server = ChatServer((args.host, args.port), args.request_timeout, args.request_deadline, args.allowed_host)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}): choose another "
                        f"--port (0 = any free port) or --host") from None
    try:
        from nanochat.common import compute_init
        _, _, _, _, device = compute_init(args.device_type, seed=42)
        pool, tokenizer, info, model = build_pool(args.source, args.model_tag, args.step,
                                                  pick_devices(device, args.num_gpus))
        limits = Limits(max_chars=args.max_chars, max_tokens=args.max_tokens,
                        context_tokens=model_positions(model), vocab_size=tokenizer.get_vocab_size(),
                        temperature=args.temperature, top_k=args.top_k)
        server.attach(pool, tokenizer, limits, info, args.max_concurrent or 4 * len(pool))
    except BaseException:
        server.server_close()
        raise
    return server
