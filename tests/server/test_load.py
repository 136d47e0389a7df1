"""A bounded load test on loopback: 50 concurrent clients, 20 requests each, mixed pages,
table API, model-backed API and playground runs, against a live uvicorn."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from dashboard_fixtures import Served

CLIENTS = 50
REQUESTS = 20


@pytest.mark.slow  # 1,000 requests against a live server (6-9 s)
def test_fifty_concurrent_clients(live_url: str, served: Served) -> None:
    layer, neuron, hl, h = served.kept_pair()
    gets = [
        "/",
        f"/neurons/{layer}/{neuron}",
        f"/pairs/{layer}/{neuron}/{hl}/{h}",
        "/playground",
        "/api/neurons?per_page=20",
        "/api/pairs?kept=all&sort=mean_direct",
        f"/api/neurons/{layer}/{neuron}",
        f"/api/neurons/{layer}/{neuron}/activations",
        f"/api/pairs/{layer}/{neuron}/{hl}/{h}/attention",
        "/static/app.js",
    ]
    post = {"prompt": served.lines[3], "layer": layer, "neuron": neuron}
    latencies: list[float] = []
    errors: list[str] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for j in range(REQUESTS):
            k = (i + j) % (len(gets) + 1)
            t0 = time.perf_counter()
            try:
                if k == len(gets):
                    heads = [{"layer": hl, "head": h, "scale": float(j % 3) / 2}]
                    r = await http.post("/api/playground", json={**post, "heads": heads})
                    what = "POST /api/playground"
                else:
                    r = await http.get(gets[k])
                    what = gets[k]
                if r.status_code != 200:
                    errors.append(f"{what}: {r.status_code} {r.text[:120]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

    async def main() -> float:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        timeout = httpx.Timeout(60.0, connect=30.0)
        async with httpx.AsyncClient(base_url=live_url, limits=limits, timeout=timeout) as http:
            t0 = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(client(i, http) for i in range(CLIENTS))), timeout=300
            )
            return time.perf_counter() - t0

    wall = asyncio.run(main())
    ms = np.array(latencies) * 1000
    p50, p95 = np.percentile(ms, [50, 95])
    print(
        f"\nload test: {CLIENTS} clients x {REQUESTS} requests = {len(ms)} in {wall:.1f} s "
        f"({len(ms) / wall:.0f} req/s); latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
        f"max {ms.max():.1f} ms; errors {len(errors)}"
    )
    assert errors == []
    assert len(ms) == CLIENTS * REQUESTS
