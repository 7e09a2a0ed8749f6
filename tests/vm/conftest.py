"""Glue for tests that only make sense inside the VM lane's guests (scripts/vm/run.sh sets
SENSORIUM_IN_VM to the guest's kernel release). Everything under tests/vm/ is marked ``vm``."""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("SENSORIUM_IN_VM") or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.vm)


@pytest.fixture
def in_guest() -> str:
    """The guest's kernel release; on the host the test is skipped with the reason."""
    if not IN_VM:
        pytest.skip(f"checks the VM lane's guest kernel; runs there (make test-vm), "
                    f"not on this host (kernel {os.uname().release})")
    return IN_VM
