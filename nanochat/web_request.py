"""What the web chat accepts: who may ask (Host, Origin, Content-Type), what a completion may hold.

Who may ask: only the server's own names (`Host`: the bound address, the loopback names when bound
to loopback, any IP address and this machine's name when bound to all interfaces, plus each
`--allowed-host`), else 421, which stops DNS rebinding; a request from another site's page (a
cross-origin `Origin`) gets 403; a completion must be `Content-Type: application/json` (415
otherwise), which a page can only send to another origin after a CORS preflight we never grant.
"""
from __future__ import annotations

import ipaddress
import json
import math
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from nanochat.chat import describe_value, check_sampling

KNOWN_FIELDS = {"messages", "temperature", "top_k", "max_tokens", "seed"}
IGNORED_FIELDS = {"model", "stream"}       # sent by OpenAI-style clients; we always stream
ROLES = {"system", "user", "assistant"}
PART_TYPES = {"text", "python", "python_output"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class RequestError(Exception):
    """A refused request: HTTP status + one line saying what to change."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Limits:
    max_chars: int = 32000        # characters over all message contents
    max_tokens: int = 512         # the most (and default) tokens per answer
    context_tokens: int | None = None  # the model's positions (prompt + answer)
    vocab_size: int = 0
    temperature: float = 0.6      # defaults for fields a request leaves out
    top_k: int = 50

    @property
    def max_body_bytes(self) -> int:
        # JSON may escape a character as 12 bytes (an astral one as two \uXXXX surrogates), plus the other fields
        return 12 * self.max_chars + 65536


@dataclass
class ChatRequest:
    messages: list
    prompt: list[int]
    temperature: float
    top_k: int
    max_tokens: int
    seed: int


# ---------------------------------------------------------------------- what a completion may hold

def _number_field(payload: dict, key: str, default, lo, hi, integer: bool):
    if key not in payload or payload[key] is None:
        return default
    v = payload[key]
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise RequestError(400, f"{key} must be {kind} from {lo} to {hi}, got {describe_value(v)}")
    if (isinstance(v, float) and not math.isfinite(v)) or not lo <= v <= hi:
        raise RequestError(400, f"{key} must be {kind} from {lo} to {hi}, got {v}")
    return v


def _check_message(i: int, m) -> int:
    """Validate message i; returns its number of characters."""
    if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
        raise RequestError(400, f"message {i} must be an object with exactly 'role' and 'content'")
    role, content = m["role"], m["content"]
    if not isinstance(role, str) or role not in ROLES:
        raise RequestError(400, f"message {i} has role {describe_value(role)}: use system, user or assistant")
    if isinstance(content, str):
        if role != "assistant" and not content.strip():
            raise RequestError(400, f"message {i} ({role}) is empty: type something")
        return len(content)
    if role == "assistant" and isinstance(content, list):
        n = 0
        for part in content:
            if (not isinstance(part, dict) or part.get("type") not in PART_TYPES
                    or not isinstance(part.get("text"), str)):
                raise RequestError(400, f"message {i}: assistant parts are {{\"type\": text|python|python_output, "
                                        f"\"text\": string}}")
            n += len(part["text"])
        return n
    raise RequestError(400, f"message {i} ({role}) content must be a string"
                            + (" or a list of parts" if role == "assistant" else ""))


def parse_chat_request(body: bytes, tokenizer, limits: Limits) -> ChatRequest:
    """The request body -> a validated request with its prompt ids; RequestError otherwise."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({str(exc)[:80]})") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply: send a flat {\"messages\": [...]} object") \
            from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object with a 'messages' list")
    unknown = sorted(set(payload) - KNOWN_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}: use {', '.join(sorted(KNOWN_FIELDS))}")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    chars = sum(_check_message(i, m) for i, m in enumerate(messages))
    if not any(m["role"] == "user" for m in messages):
        raise RequestError(400, "the conversation has no user message")
    if messages[-1]["role"] != "user":
        raise RequestError(400, "the last message must be the user's (the one to answer)")
    if chars > limits.max_chars:
        raise RequestError(413, f"the conversation has {chars} characters, more than this server's limit of "
                                f"{limits.max_chars} (--max-chars): start a new conversation")
    try:
        temperature, top_k = check_sampling(
            limits.temperature if payload.get("temperature") is None else payload["temperature"],
            limits.top_k if payload.get("top_k") is None else payload["top_k"], limits.vocab_size)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    max_tokens = _number_field(payload, "max_tokens", limits.max_tokens, 1, limits.max_tokens, True)
    seed = _number_field(payload, "seed", None, 0, 2**63 - 1, True)
    try:
        prompt = tokenizer.render_for_completion({"messages": messages})
    except ValueError as exc:  # role order, misplaced system message
        raise RequestError(400, str(exc)) from None
    if limits.context_tokens is not None and len(prompt) >= limits.context_tokens:
        raise RequestError(413, f"the conversation is {len(prompt)} tokens but the model's context holds "
                                f"{limits.context_tokens}: start a new conversation")
    return ChatRequest(messages, prompt, temperature, top_k, max_tokens,
                       seed if seed is not None else secrets.randbelow(2**31))


# ----------------------------------------------------------------------------- who may ask

def host_name(value: str) -> str:
    """A Host header or --allowed-host value -> its name: lower case, without port, brackets or final dot."""
    v = value.strip().lower()
    if v.startswith("["):
        v = v[1:].split("]", 1)[0]
    elif v.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        v = v.split(":", 1)[0]
    return v.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class HostPolicy:
    """The names this server answers to: what it is bound to, plus each --allowed-host (a reverse proxy's).

    Any IP address is fine when bound to all interfaces: DNS rebinding needs a name to re-point."""

    def __init__(self, bound: str, allowed: list[str] = ()):
        b = host_name(bound)
        self.extra = {host_name(h) for h in allowed} - {""}
        self.any_ip = b in ("", "0.0.0.0", "::")
        names = {b} | self.extra
        if self.any_ip:
            names |= LOOPBACK_NAMES | {socket.gethostname().lower()}
        elif b == "localhost" or (_is_ip(b) and ipaddress.ip_address(b).is_loopback):
            names |= LOOPBACK_NAMES
        self.names = names - {"", "0.0.0.0", "::"}

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_ip and _is_ip(name))

    def describe(self) -> str:
        return ", ".join(sorted(self.names)) + (" or any IP address" if self.any_ip else "")


    def refusal(self, headers) -> RequestError | None:
        """A request from a name this server is not, or from another site's page: why it is refused."""
        hosts = headers.get_all("Host") or []
        if len(hosts) > 1:
            return RequestError(400, "send one Host header")
        host = hosts[0].strip() if hosts else ""  # none: an HTTP/1.0 tool (browsers always send one)
        if host and not self.allows(host_name(host)):
            return RequestError(421, f"this server answers to {self.describe()}, not Host "
                                     f"{describe_value(host)}: open it by one of those, or start it with "
                                     f"--allowed-host {describe_value(host_name(host))} if a proxy serves it "
                                     f"under that name")
        origin = headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin.strip())
            same = parts.scheme in ("http", "https") and parts.netloc and (
                parts.netloc.lower() == host.lower() or host_name(parts.netloc) in self.extra)
            if not same:
                return RequestError(403, f"cross-origin request from {describe_value(origin)} refused: use the "
                                         f"page this server serves (a proxy's public name needs --allowed-host)")
        return None


def content_type_refusal(headers) -> RequestError | None:
    """A completion's body must be declared JSON (cross-origin, a page needs a preflight for that)."""
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return RequestError(415, f"send the body as JSON with Content-Type: application/json "
                                 f"(got {describe_value(ctype) if ctype else 'none'})")
    return None
