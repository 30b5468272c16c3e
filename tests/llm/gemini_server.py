"""A local HTTP server on 127.0.0.1 that speaks Gemini's streaming REST protocol (``:streamGenerateContent?alt=sse``).

Response shapes follow recorded Gemini API replies: SSE ``data: <GenerateContentResponse JSON>`` events over a chunked
HTTP/1.1 body, the last one carrying ``finishReason``; errors are JSON ``{"error": {code, message, status}}``.
The model name in the URL picks the behaviour: normal, slow, err500, cut, badkey, badkey400, nofinish, empty.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_KEY = "test-key-123"
REPLY = ["The capital", " of France", " is Paris."]


def chunk_json(text: str, finish: bool = False) -> dict:
    cand: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    out: dict = {"candidates": [cand], "modelVersion": "gemini-2.5-flash-lite", "responseId": "fern-test"}
    if finish:
        cand["finishReason"] = "STOP"
        out["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19}
    else:
        out["usageMetadata"] = {"promptTokenCount": 12, "totalTokenCount": 12}
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "GeminiServer"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, obj: dict) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode() + b"\r\n\r\n")

    def _error(self, code: int, status: str, message: str, reason: str | None = None) -> None:
        err: dict = {"code": code, "message": message, "status": status}
        if reason:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                               "domain": "googleapis.com"}]
        body = json.dumps({"error": err}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        model = self.path.split("/models/")[-1].split(":")[0]
        if self.headers.get("x-goog-api-key") != GOOD_KEY or model == "badkey":
            return self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if model == "badkey400":
            return self._error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                               "API_KEY_INVALID")
        if model == "err500":
            return self._error(500, "INTERNAL", "An internal error has occurred.")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if model == "slow":
            time.sleep(self.server.slow_s)
        if model == "empty":
            self._event({"candidates": [{"content": {"role": "model"}, "finishReason": "SAFETY", "index": 0}]})
            self._chunk(b"")
            return
        for i, text in enumerate(REPLY):
            last = i == len(REPLY) - 1
            if model == "cut" and i == 2:
                # Drop the connection mid-body: no final chunk, no chunked-encoding terminator.
                self.wfile.flush()
                self.connection.shutdown(2)
                self.close_connection = True
                return
            self._event(chunk_json(text, finish=last and model != "nofinish"))
            time.sleep(0.02)
        self._chunk(b"")  # end of the chunked body


class GeminiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, slow_s: float = 1.5) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.slow_s = slow_s
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "GeminiServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
