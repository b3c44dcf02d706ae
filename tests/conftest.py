import os

import pytest
import torch

# keep the 2-core CI machine responsive; tests are tiny anyway
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def dk_log():
    """The messages logged at WARNING or above on the ``defectkit`` logger during the test."""
    import logging

    msgs: list[str] = []

    class H(logging.Handler):
        def emit(self, record):
            msgs.append(record.getMessage())

    h = H(logging.WARNING)
    logging.getLogger("defectkit").addHandler(h)
    yield msgs
    logging.getLogger("defectkit").removeHandler(h)
