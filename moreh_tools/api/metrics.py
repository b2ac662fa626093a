"""``GET /metrics``: the sampled GPU metrics as Prometheus text (filled in below)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
