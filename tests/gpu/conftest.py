import pytest

from nmgen.runtime import driver


def pytest_collection_modifyitems(config, items):
    """Mark every test in this folder `gpu`, and skip it, saying why, where there is no GPU."""
    reason = None
    if not driver.available():
        try:
            driver.init()
        except Exception as e:  # noqa: BLE001 - the reason is the message
            reason = f"no CUDA GPU here ({str(e)[:120]}); run the gpu tier on the device machine"
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
