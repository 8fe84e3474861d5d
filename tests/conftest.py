import sys
from pathlib import Path

import pytest
import torch

# Tiny models on a shared 2-core machine: one thread is ~10x faster than two fighting.
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py, tests/openai_server.py


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, whatever an earlier module left set (some code under
    test sets its own count); the count before is restored after. Modules ask for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
