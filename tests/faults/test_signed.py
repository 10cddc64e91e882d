"""Signed snapshots: a JWS of the exact text, the JWKS, and a client that refuses forgeries."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from trio_websocket import serve_websocket

from core.client import Client, SignatureError
from core.signing import Signer, keygen, public_key_of, verify

from .conftest import CoreServer, component_table, serving, ws_client


def get_json(srv: CoreServer, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    path = tmp_path / "signing.pem"
    out = subprocess.run([sys.executable, "-m", "core", "keygen", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    again = subprocess.run([sys.executable, "-m", "core", "keygen", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_signed_subscriber_gets_the_exact_text_others_get(tmp_path):
    key = keygen(tmp_path / "signing.pem")
    with serving(tmp_path, component_table("a"), signing_key=str(key)) as srv:
        status, jwks = get_json(srv, "/api/keys")
        assert status == 200 and jwks["keys"][0]["crv"] == "Ed25519"
        public = public_key_of(jwks)

        async def main() -> tuple[dict[str, str], dict[str, str]]:
            plain: dict[str, str] = {}
            signed: dict[str, str] = {}
            async with ws_client(srv.ws_url) as a, ws_client(srv.ws_url) as b:
                await b.send_message(json.dumps({"type": "subscribe", "signed": True}))
                with trio.fail_after(10):
                    while len(set(plain) & set(signed)) < 2:
                        with trio.move_on_after(0.05):
                            text = await a.get_message()
                            plain[json.loads(text)["metrics"]["timestamp"]] = text
                        with trio.move_on_after(0.05):
                            message = await b.get_message()
                            if not message.startswith("{"):  # the on-connect one is plain
                                text = verify(message, public)
                                signed[json.loads(text)["metrics"]["timestamp"]] = text
            return plain, signed

        plain, signed = trio.run(main)
    common = set(plain) & set(signed)
    for stamp in common:
        assert signed[stamp] == plain[stamp]  # byte for byte the same document


def test_the_python_client_verifies_and_refuses_a_tampered_byte():
    key = ed25519.Ed25519PrivateKey.generate()
    signer = Signer(key)
    text = json.dumps({"components": {}, "metrics": {"timestamp": "2026-01-01T00:00:00Z"}})
    good = signer.sign(text)
    head, payload, signature = good.split(".")
    tampered = ".".join((head, payload[:-1] + ("A" if payload[-1] != "A" else "B"),
                         signature))
    forged = Signer(ed25519.Ed25519PrivateKey.generate()).sign(text)

    async def serve_then_follow(frames: list[str]) -> list[dict | SignatureError]:
        async def handler(request) -> None:
            ws = await request.accept()
            await ws.send_message(text)  # unsigned, before the subscription: skipped
            assert json.loads(await ws.get_message()) == {"type": "subscribe", "signed": True}
            for frame in frames:
                await ws.send_message(frame)
            await ws.aclose(1000)

        got: list[dict | SignatureError] = []
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            try:
                async with Client(f"http://127.0.0.1:{server.port}",
                                  verify_key=signer.jwks) as cc, cc.snapshots() as stream:
                    async for doc in stream:
                        got.append(doc)
            except SignatureError as exc:
                got.append(exc)
            nursery.cancel_scope.cancel()
        return got

    assert trio.run(serve_then_follow, [good, good]) == [json.loads(text)] * 2
    for bad in (tampered, forged):
        first, refused = trio.run(serve_then_follow, [good, bad])
        assert first == json.loads(text)
        assert isinstance(refused, SignatureError), refused
        assert "signed snapshot refused" in str(refused)


def test_without_a_signing_key_a_signed_subscription_is_an_error(tmp_path):
    with serving(tmp_path, component_table("a")) as srv:
        assert get_json(srv, "/api/keys") == (200, {"keys": []})

        async def main() -> dict:
            async with ws_client(srv.ws_url) as ws:
                await ws.get_message()
                await ws.send_message(json.dumps({"type": "subscribe", "signed": True}))
                return json.loads(await ws.get_message())

        reply = trio.run(main)
    assert reply["type"] == "error" and "signing_key" in reply["error"]


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot read"), (b"not a key", "expected an Ed25519 private key")])
def test_a_bad_signing_key_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    (tmp_path / "config.toml").write_text(f'[server]\nsigning_key = "{path}"\n')
    out = subprocess.run([sys.executable, "-m", "core", "check", str(tmp_path / "config.toml")],
                         capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2])
    assert out.returncode == 2 and "server.signing_key" in out.stderr, out.stderr
    assert words.lower() in out.stderr.lower(), out.stderr
