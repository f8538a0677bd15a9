"""A real JWKS/OIDC discovery HTTP server on 127.0.0.1 whose keys a test can rotate, and signing
helpers for the tokens such an issuer would issue."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "voxmesh-app"


@dataclass
class SigningKey:
    kid: str | None
    algorithm: str  # RS256 or ES256
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @staticmethod
    def rsa(kid: str | None) -> SigningKey:
        return SigningKey(kid, "RS256", rsa.generate_private_key(65537, 2048))

    @staticmethod
    def ec(kid: str | None) -> SigningKey:
        return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private, rsa.RSAPrivateKey):
            jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(
                self.private.public_key(), as_dict=True
            )
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update(use="sig", alg=self.algorithm)
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class JwksServer:
    """``/.well-known/openid-configuration`` and ``/jwks`` over real HTTP, keys swappable."""

    keys: list[SigningKey]
    issuer: str = ""
    jwks_requests: int = 0
    delay_s: float = 0.0
    down: bool = False
    discovery_issuer: str | None = None  # None: the real issuer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rotate(self, keys: list[SigningKey]) -> None:
        with self.lock:
            self.keys = keys

    def token(self, key: SigningKey, user: str = "alice", **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": user,
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
        }
        payload.update(claims)
        headers = {"kid": key.kid} if key.kid is not None else None
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers=headers)


def unsigned_token(claims: dict[str, Any]) -> str:
    """``alg: none``: no signature at all."""
    return _raw_token(claims, {"alg": "none", "typ": "JWT"}, b"")


def hs256_with_key(claims: dict[str, Any], secret: bytes, kid: str | None = None) -> str:
    """The algorithm-confusion attack: HS256 'signed' with the issuer's *public* key."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _raw_token(claims, header, secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(claims: dict[str, Any], header: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if header.get("alg") == "none":
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@contextmanager
def serve_jwks(keys: list[SigningKey]) -> Iterator[JwksServer]:
    state = JwksServer(keys)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            if state.down:
                self.send_error(503)
                return
            if self.path == "/.well-known/openid-configuration":
                issuer = state.issuer if state.discovery_issuer is None else state.discovery_issuer
                body: dict[str, Any] = {"issuer": issuer, "jwks_uri": state.issuer + "/jwks"}
            elif self.path == "/jwks":
                with state.lock:
                    state.jwks_requests += 1
                    body = {"keys": [k.public_jwk() for k in state.keys]}
                if state.delay_s:
                    time.sleep(state.delay_s)
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
