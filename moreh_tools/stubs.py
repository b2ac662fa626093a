"""Console scripts whose issues have not landed yet: they say so and exit non-zero."""

import sys


def _pending(name: str) -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(f"usage: {name} ...\n\n{name} is part of moreh-tools but is not implemented yet.")
        sys.exit(0)
    print(f"{name}: not implemented yet in this moreh-tools version.", file=sys.stderr)
    sys.exit(1)


def moreh_smi() -> None:
    """moreh-smi placeholder."""
    _pending("moreh-smi")


def moreh_switch_model() -> None:
    """moreh-switch-model placeholder."""
    _pending("moreh-switch-model")


def moreh_run() -> None:
    """moreh-run placeholder."""
    _pending("moreh-run")


def sdamanager() -> None:
    """sdamanager placeholder."""
    _pending("sdamanager")
