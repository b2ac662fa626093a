"""GPU providers: real NVIDIA GPUs through NVML, or simulated ones.

``get_provider()`` picks one from ``MOREH_FAKE_GPUS``:

* ``N`` or ``N:MiB`` (e.g. ``8``, ``8:81920``): N simulated GPUs of MiB each (default 81920),
  whose ``description`` names the variable.
* ``0``: NVML only; :class:`GpuUnavailableError` if NVML is not usable.
* unset or empty: NVML, falling back to 8 simulated GPUs x 81920 MiB whose ``description`` says
  why NVML could not be used.

Simulated GPUs read their faults from the file ``MOREH_FAKE_GPU_FAULTS`` names (see
:mod:`moreh_tools.gpus.simulated`); real GPUs ignore that variable.

Every provider answers ``snapshot()`` (figures and processes), ``health()`` (a list of
:class:`GpuHealthEvent`: what is wrong now, and critical Xids since the last call) and
``warnings()`` (one-line notices to log, each once). The decisions over them (which Xids count, foreign
processes, idle jobs) are in the pure module :mod:`scheduler_core.gpu_health`.

Importing this package loads neither ``pynvml`` nor ``psutil``; the providers import them when
they are created.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from moreh_tools.gpus.base import (
    DEFAULT_FAKE_GPU_COUNT,
    DEFAULT_FAKE_GPU_MEMORY_MIB,
    MAX_FAKE_GPU_COUNT,
    MAX_FAKE_GPU_MEMORY_MIB,
    GpuHealthEvent,
    GpuProcess,
    GpuProvider,
    GpuSnapshot,
    GpuUnavailableError,
)

if TYPE_CHECKING:
    from moreh_tools.gpus.nvml import NvmlGpuProvider
    from moreh_tools.gpus.simulated import SimulatedGpuProvider

__all__ = [
    "FAKE_GPUS_VAR",
    "FAULTS_VAR",
    "GpuHealthEvent",
    "GpuProcess",
    "GpuProvider",
    "GpuSnapshot",
    "GpuUnavailableError",
    "NvmlGpuProvider",
    "SimulatedGpuProvider",
    "get_provider",
    "parse_fake_gpus",
]

FAKE_GPUS_VAR = "MOREH_FAKE_GPUS"
#: The simulated GPUs' fault file (kept equal to moreh_tools.gpus.simulated.FAULTS_VAR).
FAULTS_VAR = "MOREH_FAKE_GPU_FAULTS"

_FAKE_FORM = re.compile(r"([0-9]+)(?::([0-9]+))?")


def parse_fake_gpus(value: str) -> tuple[int, int] | None:
    """Parse ``MOREH_FAKE_GPUS``: ``(count, MiB)`` for simulated GPUs, ``None`` for ``0`` (NVML only).

    Raises :class:`GpuUnavailableError` with a one-line message naming the accepted forms.
    """
    text = value.strip()
    match = _FAKE_FORM.fullmatch(text)
    count = int(match.group(1)) if match else -1
    memory = int(match.group(2)) if match and match.group(2) is not None else DEFAULT_FAKE_GPU_MEMORY_MIB
    if match and count == 0 and match.group(2) is None:
        return None
    if not match or not 1 <= count <= MAX_FAKE_GPU_COUNT or not 1 <= memory <= MAX_FAKE_GPU_MEMORY_MIB:
        raise GpuUnavailableError(
            f"invalid {FAKE_GPUS_VAR}={value!r}: use N or N:MiB with N in 1..{MAX_FAKE_GPU_COUNT} and MiB in "
            f"1..{MAX_FAKE_GPU_MEMORY_MIB} (e.g. 8 or 8:81920), or 0 for real NVIDIA GPUs only"
        )
    return count, memory


def simulated_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``MOREH_FAKE_GPUS`` asks for simulated GPUs (cheap to list: no NVML); GpuUnavailableError when invalid.

    Checked on every run, not only when a host registers, so a mistyped value never passes unnoticed.
    """
    text = (os.environ if env is None else env).get(FAKE_GPUS_VAR, "")
    return bool(text.strip()) and parse_fake_gpus(text) is not None


def _open_nvml() -> NvmlGpuProvider:
    """An initialised NVML provider with at least one device, or :class:`GpuUnavailableError`."""
    from moreh_tools.gpus.nvml import NvmlGpuProvider

    provider = NvmlGpuProvider().open()
    if provider.device_count() < 1:
        provider.close()
        raise GpuUnavailableError("NVML sees no GPU", reason="no device")
    return provider


def get_provider(env: Mapping[str, str] | None = None) -> GpuProvider:
    """The GPU provider that ``env`` (default: ``os.environ``) asks for; see the module docstring."""
    environ = os.environ if env is None else env
    from_env = environ.get(FAKE_GPUS_VAR, "")
    faults = environ.get(FAULTS_VAR, "").strip() or None
    if from_env.strip():
        fake = parse_fake_gpus(from_env)
        if fake is not None:
            from moreh_tools.gpus.simulated import SimulatedGpuProvider

            return SimulatedGpuProvider(
                *fake, reason=f"{FAKE_GPUS_VAR}={from_env.strip()} asks for them", faults=faults
            )
        try:
            return _open_nvml()
        except GpuUnavailableError as exc:
            raise GpuUnavailableError(
                f"{FAKE_GPUS_VAR}=0 asks for real NVIDIA GPUs, but none is usable (NVML: {exc.reason})",
                reason=exc.reason,
            ) from exc
    try:
        return _open_nvml()
    except GpuUnavailableError as exc:
        from moreh_tools.gpus.simulated import SimulatedGpuProvider

        return SimulatedGpuProvider(
            DEFAULT_FAKE_GPU_COUNT,
            DEFAULT_FAKE_GPU_MEMORY_MIB,
            reason=f"no NVIDIA GPU found (NVML: {exc.reason})",
            faults=faults,
        )


def __getattr__(name: str) -> Any:
    """Load the provider classes on first use, so that importing the package stays light."""
    if name == "NvmlGpuProvider":
        from moreh_tools.gpus.nvml import NvmlGpuProvider

        return NvmlGpuProvider
    if name == "SimulatedGpuProvider":
        from moreh_tools.gpus.simulated import SimulatedGpuProvider

        return SimulatedGpuProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
