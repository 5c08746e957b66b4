import re

import pytest

from nmgen.runtime import driver


def skip_reason(e: Exception) -> str:
    """Why the gpu tier is skipped, short and whole: the first clause of the driver's message (its
    details in parentheses left out), so pytest's -ra summary does not end mid-word."""
    why = re.split(r" \(|; |: ", str(e).strip(), maxsplit=1)[0].rstrip(".") or type(e).__name__
    return f"no CUDA GPU here ({why}); run the gpu tier on the device machine"


def pytest_collection_modifyitems(config, items):
    """Mark every test in this folder `gpu`, and skip it, saying why, where there is no GPU."""
    reason = None
    if not driver.available():
        try:
            driver.init()
        except Exception as e:  # noqa: BLE001 - the reason is the message
            reason = skip_reason(e)
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
