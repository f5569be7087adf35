"""The peer: the route a user would write without navai_mw.

A FastAPI endpoint that validates the front end's JSON with pydantic, builds
the same instructions as navai_mw, and calls the official openai SDK
(``client.realtime.client_secrets.create``, openai 3.57 on httpx2) with one
client shared by all requests, as the SDK's documentation recommends.
"""

from typing import Any

import openai
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from ._harness import BENCH_KEY, MINT_PATH


class MintRequest(BaseModel):
    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    language: str | None = None
    # Spelled as the front end sends them.
    voiceAccent: str | None = None
    voiceTone: str | None = None


def _instructions(body: MintRequest) -> str:
    lines = [(body.instructions or "You are a helpful assistant.").strip()]
    if body.language:
        lines.append(f"Always reply in {body.language}.")
    if body.voiceAccent:
        lines.append(f"Use a {body.voiceAccent} accent while speaking.")
    if body.voiceTone:
        lines.append(f"Use a {body.voiceTone} tone while speaking.")
    return "\n".join(lines)


def make_peer(upstream: str) -> FastAPI:
    client = openai.AsyncOpenAI(api_key=BENCH_KEY, base_url=upstream)
    app = FastAPI()

    @app.post(MINT_PATH)
    async def mint(body: MintRequest | None = None) -> dict[str, Any]:
        body = body or MintRequest()
        try:
            secret = await client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": 600},
                session={
                    "type": "realtime",
                    "model": body.model or "gpt-realtime",
                    "instructions": _instructions(body),
                    "audio": {"output": {"voice": body.voice or "marin"}},
                },
            )
        except openai.APIError as exc:
            raise HTTPException(status_code=502, detail=str(exc)) from None
        return {"value": secret.value, "expires_at": secret.expires_at}

    return app
